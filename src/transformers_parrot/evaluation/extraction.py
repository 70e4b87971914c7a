"""Exact-match answer extraction, following VLMEvalKit's ``can_infer`` rules.

1. Replace each of the characters ``.()[],:;!*#{}`` with a space and split on whitespace. If exactly one of the
   row's option letters appears as a whole word, that letter is the answer. Letters are matched
   case-sensitively (capital letters only), as in the toolkit, so "(b)" does not name option B.
2. Otherwise, if exactly one option's text appears (case-insensitively, as a substring) in the prediction,
   that option is the answer.
3. Otherwise the question is unanswered, which scores as wrong.

The toolkit also maps a few fixed refusal sentences, and a prediction naming no option letter but containing the
word "Z", to a dummy choice "Z" *without* trying the option texts; that scores as wrong, so here it gives ``None``
the same way (the option-text step is skipped for those predictions too).
"""

from __future__ import annotations

from collections.abc import Mapping

STRIP_CHARS = ".()[],:;!*#{}"
_TRANSLATION = str.maketrans({c: " " for c in STRIP_CHARS})
# Sentences VLMEvalKit treats as a refusal (dummy answer "Z").
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def _letter_match(prediction: str, letters) -> str | None:
    words = set(prediction.translate(_TRANSLATION).split())
    found = [L for L in letters if L in words]
    return found[0] if len(found) == 1 else None


def _text_match(prediction: str, options: Mapping[str, str]) -> str | None:
    low = prediction.lower()
    found = [L for L, text in options.items() if str(text).lower() in low]
    return found[0] if len(found) == 1 else None


def extract_choice(prediction: str | None, options: Mapping[str, str]) -> str | None:
    """The option letter a free-form prediction names, or ``None`` if it names none or several.

    ``options`` maps the row's present option letters to their texts (empty options removed).
    """
    if prediction is None:
        return None
    prediction = str(prediction)
    options = {str(k): str(v) for k, v in options.items() if v is not None and str(v) != ""}
    if not options:
        return None
    if any(r in prediction for r in REFUSALS):
        return None
    letters = sorted(options)
    letter = _letter_match(prediction, letters)
    if letter is not None:
        return letter
    words = prediction.translate(_TRANSLATION).split()
    if "Z" not in letters and "Z" in words and not any(L in words for L in letters):
        return None  # the toolkit's dummy choice "Z"
    return _text_match(prediction, options)
