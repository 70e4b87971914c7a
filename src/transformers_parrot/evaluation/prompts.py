"""Parrot's multiple-choice evaluation prompt (as the Parrot release evaluates it with VLMEvalKit)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers.utils.logging import get_logger

from ..languages import normalize_language
from ..models.parrot.processing_parrot import IMAGE_TOKEN

logger = get_logger(__name__)

# The language-specific instruction appended after the options (preceded by a newline).
INSTRUCTIONS: dict[str, str] = {
    "en": "Answer with the option's letter from the given choices directly.",
    "zh": "请直接用给定选项中的选项字母回答。",
    "pt": "Responda diretamente com a letra da opção das escolhas dadas.",
    "ar": "أجب مباشرةً بحرف الخيار من الاختيارات المعطاة.",
    "ru": "Ответьте буквой варианта из предложенных вариантов напрямую.",
    "tr": "Verilen seçeneklerden doğrudan seçeneğin harfi ile cevap verin.",
}


def instruction_for(language: str) -> str:
    """The answer instruction for a language code (``cn`` is accepted for Chinese)."""
    return INSTRUCTIONS[normalize_language(language)]


def build_prompt(
    question: str,
    options: Mapping[str, str],
    language: str,
    hint: str | None = None,
) -> str:
    """Build Parrot's multiple-choice prompt.

    ``[hint + "\\n"] + question + "".join("\\n{letter}. {text}") + "\\n" + instruction``.
    Options are emitted in letter order; empty options must already be removed.
    """
    prompt = ""
    if hint is not None and str(hint).strip() != "":
        prompt += f"{hint}\n"
    prompt += question
    for letter in sorted(options):
        prompt += f"\n{letter}. {options[letter]}"
    prompt += "\n" + instruction_for(language)
    return prompt


def build_sample_prompt(sample) -> str:
    """Prompt for a :class:`~transformers_parrot.evaluation.data.Sample`."""
    return build_prompt(sample.question, sample.options, sample.language, sample.hint)


@dataclass
class PromptItem:
    """One generation request: an RGB image, the full question prompt, its language and row index."""

    image: Any
    prompt: str
    language: str
    index: int = -1


def chat_text(processor, prompt: str) -> str:
    """The text a model is prompted with: the processor's chat template over one user turn ``[image, prompt]`` with
    the generation prompt (``"<image>\\n{prompt}"`` when the processor has no usable template). Every backend sends
    exactly this text."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    try:
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except (ValueError, AttributeError, TypeError) as e:
        image_token = getattr(processor, "image_token", None) or IMAGE_TOKEN
        logger.warning("processor has no usable chat template (%s); using '%s\\n{prompt}'", e, image_token)
        return f"{image_token}\n{prompt}"
