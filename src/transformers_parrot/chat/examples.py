"""The page's one-click examples (the bundled image, one question in each of the six languages) and the
translations used to compare an image's routing across languages."""

from __future__ import annotations

import os
import tempfile

from ..assets import bundled_image
from ..demo.data import LANGUAGES, QUESTIONS
from ..evaluation.data import LANGUAGE_NAMES

EXAMPLE_KIND = "colour"  # of the demo's questions: the bundled image shows a red circle and a blue square
RTL_LANGUAGES = frozenset({"ar"})


def example_questions() -> dict[str, str]:
    """{language: question} of the one-click examples, in the paper's language order."""
    return {lang: QUESTIONS[lang][EXAMPLE_KIND] for lang in LANGUAGES}


def translations(question: str) -> dict[str, str] | None:
    """The same question in all six languages when `question` is one of the demo's questions, else None."""
    question = question.strip()
    for kind in QUESTIONS["en"]:
        if any(QUESTIONS[lang][kind] == question for lang in LANGUAGES):
            return {lang: QUESTIONS[lang][kind] for lang in LANGUAGES}
    return None


def bundled_image_path(folder: str | None = None) -> str:
    """The bundled demo image written as a PNG file (the page serves files, not PIL images)."""
    folder = folder or os.path.join(tempfile.gettempdir(), "parrot-chat")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "bundled_image.png")
    if not os.path.exists(path):
        partial = f"{path}.{os.getpid()}.tmp"
        bundled_image(width=256, height=192).save(partial, format="PNG")
        os.replace(partial, path)
    return path


__all__ = ["EXAMPLE_KIND", "LANGUAGES", "LANGUAGE_NAMES", "RTL_LANGUAGES", "bundled_image_path",
           "example_questions", "translations"]
