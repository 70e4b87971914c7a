"""The six languages of Parrot's benchmarks (MMMB, multilingual MMBench) and the example questions asked in them.

One home for what the evaluator, the demo, the chat page, the quickstart and the tests share: language codes in the
paper's order, their names, the codes of the released file names, which are written right to left, and the
multilingual questions about the demo's drawings (colour, shape, count, position).

A leaf module: it imports nothing from the rest of the package.
"""

from __future__ import annotations

# Paper order of the six MMMB / multilingual MMBench languages.
LANGUAGES: tuple[str, ...] = ("en", "zh", "pt", "ar", "tr", "ru")
LANGUAGE_NAMES = {
    "en": "English",
    "zh": "Chinese",
    "pt": "Portuguese",
    "ar": "Arabic",
    "tr": "Turkish",
    "ru": "Russian",
}
# Code used in the released file names ("cn" is the file code for Chinese).
FILE_CODES = {"en": "en", "zh": "cn", "pt": "pt", "ar": "ar", "tr": "tr", "ru": "ru"}
RTL_LANGUAGES = frozenset({"ar"})
_ALIASES = {
    "cn": "zh",
    "zh-cn": "zh",
    "zh_cn": "zh",
    "zh-hans": "zh",
    "chinese": "zh",
    "english": "en",
    "portuguese": "pt",
    "pt-br": "pt",
    "pt_br": "pt",
    "arabic": "ar",
    "turkish": "tr",
    "russian": "ru",
}

# {language: {kind: question}}: the demo's questions about its drawings, in every language.
QUESTIONS: dict[str, dict[str, str]] = {
    "en": {
        "colour": "What colour are the shapes in the image?",
        "shape": "What shape is shown in the image?",
        "count": "How many shapes are in the image?",
        "position": "Where is the shape in the image?",
    },
    "zh": {
        "colour": "图片中的形状是什么颜色？",
        "shape": "图片中是什么形状？",
        "count": "图片中有几个形状？",
        "position": "形状在图片的哪里？",
    },
    "pt": {
        "colour": "De que cor são as formas na imagem?",
        "shape": "Que forma aparece na imagem?",
        "count": "Quantas formas há na imagem?",
        "position": "Onde está a forma na imagem?",
    },
    "ar": {
        "colour": "ما لون الأشكال في الصورة؟",
        "shape": "ما الشكل الموجود في الصورة؟",
        "count": "كم عدد الأشكال في الصورة؟",
        "position": "أين يوجد الشكل في الصورة؟",
    },
    "tr": {
        "colour": "Resimdeki şekiller ne renk?",
        "shape": "Resimde hangi şekil var?",
        "count": "Resimde kaç şekil var?",
        "position": "Şekil resmin neresinde?",
    },
    "ru": {
        "colour": "Какого цвета фигуры на изображении?",
        "shape": "Какая фигура на изображении?",
        "count": "Сколько фигур на изображении?",
        "position": "Где находится фигура на изображении?",
    },
}
EXAMPLE_KIND = "colour"  # the bundled image shows a red circle and a blue square


class UnknownLanguageError(ValueError):
    """A language code that is not one of the six benchmark languages."""


def normalize_language(code: str) -> str:
    """Map a language code (``en``, ``zh``/``cn``, ``pt``, ``ar``, ``tr``, ``ru``, some aliases) to its canonical form."""
    key = str(code).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        raise UnknownLanguageError(
            f"unknown language code {code!r}; expected one of {', '.join(LANGUAGES)} (or 'cn' for Chinese)"
        )
    return key


def example_questions(kind: str = EXAMPLE_KIND) -> dict[str, str]:
    """{language: question} of one kind of question, in the paper's language order."""
    return {lang: QUESTIONS[lang][kind] for lang in LANGUAGES}
