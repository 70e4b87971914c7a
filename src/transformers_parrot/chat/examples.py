"""The page's bundled example image, and the translations used to compare an image's routing across languages
(the questions themselves live in `transformers_parrot.languages`)."""

from __future__ import annotations

import os
import tempfile

from ..assets import bundled_image
from ..languages import LANGUAGES, QUESTIONS


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


__all__ = ["bundled_image_path", "translations"]
