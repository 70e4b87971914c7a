"""Parrot's multiple-choice evaluation prompt (as the Parrot release evaluates it with VLMEvalKit)."""

from __future__ import annotations

from typing import Mapping

from .data import normalize_language

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
