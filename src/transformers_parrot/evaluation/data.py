"""Benchmark data: language codes, file resolution (local folder or Hub), TSV loading and validation.

The benchmark files follow the VLMEvalKit multiple-choice TSV layout (as in VLMEvalKit, the toolkit the Parrot paper scores with): columns
``index``, ``question``, option columns ``A``, ``B``, ... (empty when absent), ``answer`` (a letter),
``category``, optional ``l2-category``, ``hint`` and ``split``, and either ``image`` (base64) or ``image_path``.

Loading never crashes on a single bad row: rows with a missing answer, no options, an undecodable image or an
unknown language code become :class:`BadRow` entries (with their index and a reason) and are skipped. A missing
file or a file without the required columns raises :class:`DatasetFormatError` straight away.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from transformers.utils.logging import get_logger

from ..benchmark_specs import BENCHMARKS, HUB_DATASET_REPO
from ..languages import FILE_CODES, LANGUAGES, UnknownLanguageError, normalize_language

logger = get_logger(__name__)

CIRCULAR_MODULUS = 1_000_000
OPTION_LETTERS = tuple(string.ascii_uppercase)
REQUIRED_COLUMNS = ("index", "question", "answer")
IMAGE_COLUMNS = ("image", "image_path")
# VLMEvalKit stores a circular variant's image as the index of the row that holds the real image when the
# field is short (<= 64 characters).
_IMAGE_REFERENCE_MAX_LEN = 64


class DatasetFormatError(ValueError):
    """A benchmark file is missing, unreadable, or does not have the required column layout."""


def parse_languages(value: Iterable[str] | str | None) -> list[str]:
    """Parse ``"en,zh"`` or a list of codes into canonical codes (deduplicated, order kept). ``None`` = all six."""
    if value is None:
        return list(LANGUAGES)
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    out: list[str] = []
    for v in value:
        if not str(v).strip():
            continue
        code = normalize_language(v)
        if code not in out:
            out.append(code)
    if not out:
        raise UnknownLanguageError("no language given")
    return out


_SUFFIX_RE = re.compile(r"^(?P<stem>.*?)[_\-.](?P<lang>[A-Za-z]{2})$")


def language_from_filename(path: str | os.PathLike) -> str | None:
    """Language from a file name suffix: ``mmmb_cn.tsv`` -> ``zh``; ``None`` when there is no known suffix."""
    m = _SUFFIX_RE.match(Path(path).stem)
    if not m:
        return None
    try:
        return normalize_language(m.group("lang"))
    except UnknownLanguageError:
        return None


def benchmark_name_from_path(path: str | os.PathLike) -> str:
    """Benchmark name for a TSV path: the file stem without its language suffix (``foo_ar.tsv`` -> ``foo``)."""
    stem = Path(path).stem
    m = _SUFFIX_RE.match(stem)
    if m and language_from_filename(path) is not None and m.group("stem"):
        return m.group("stem")
    return stem


def default_data_dir() -> Path:
    env = os.environ.get("PARROT_EVAL_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(base) / "parrot_eval"


def resolve_benchmark_file(
    benchmark: str,
    language: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    repo_id: str = HUB_DATASET_REPO,
) -> Path:
    """Local path of a built-in benchmark's TSV for one language.

    Looks in ``data_dir`` first (``{data_dir}/mmmb/mmmb_cn.tsv`` or ``{data_dir}/mmmb_cn.tsv``; ``zh`` is accepted
    in place of ``cn``). If absent and ``download`` is true, fetches the file from the Hub dataset into ``data_dir``
    with ``huggingface_hub.hf_hub_download``; the next call then finds it locally, so it is never re-downloaded.
    """
    spec = BENCHMARKS[benchmark.lower()]
    language = normalize_language(language)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    codes = [FILE_CODES[language]] + ([language] if language != FILE_CODES[language] else [])
    candidates: list[Path] = []
    for code in codes:
        rel = spec.hub_template.format(code=code)
        candidates += [root / rel, root / Path(rel).name]
    for c in candidates:
        if c.is_file():
            return c
    if not download:
        raise DatasetFormatError(
            f"{spec.display_name} file for language {language!r} not found; looked for "
            + ", ".join(str(c) for c in candidates)
            + " (downloading is disabled)"
        )
    filename = spec.hub_template.format(code=FILE_CODES[language])
    try:
        from huggingface_hub import hf_hub_download

        root.mkdir(parents=True, exist_ok=True)
        local = hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=str(root))
    except Exception as e:  # offline, missing file, auth ...
        raise DatasetFormatError(
            f"{spec.display_name} file for language {language!r} is not in {root} and could not be downloaded "
            f"from the Hub dataset {repo_id} ({filename}): {type(e).__name__}: {e}. "
            f"Put the file at {candidates[0]} or pass --data-dir."
        ) from e
    return Path(local)


@dataclass
class BadRow:
    """A row that could not be evaluated; it is reported and counted in ``skipped``."""

    index: object
    language: str | None
    reason: str
    source: str = ""

    def to_dict(self) -> dict:
        return {"index": self.index, "language": self.language, "reason": self.reason, "source": self.source}


@dataclass
class Sample:
    """One multiple-choice question, ready to be prompted."""

    index: int
    language: str
    question: str
    options: dict[str, str]
    answer: str
    hint: str | None = None
    category: str | None = None
    l2_category: str | None = None
    image_b64: str | None = field(default=None, repr=False)
    image_path: Path | None = None
    source: str = ""

    @property
    def group(self) -> int:
        """Circular-evaluation group: the circular shifts of one question share ``index % 1_000_000``."""
        return self.index % CIRCULAR_MODULUS

    def load_image(self):
        """The image as an RGB ``PIL.Image``."""
        from PIL import Image

        if self.image_b64 is not None:
            img = Image.open(io.BytesIO(decode_base64(self.image_b64)))
        elif self.image_path is not None:
            img = Image.open(self.image_path)
        else:  # pragma: no cover - validated at load time
            raise ValueError(f"row {self.index} has no image")
        img.load()
        return img.convert("RGB")


def decode_base64(data: str) -> bytes:
    s = "".join(str(data).split())
    if s.startswith("data:") and "," in s:  # data URL
        s = s.split(",", 1)[1]
    s += "=" * (-len(s) % 4)
    return base64.b64decode(s, validate=True)


def _check_image_bytes(raw: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        im.verify()


def _cell(value) -> str | None:
    """A TSV cell as stripped text, ``None`` when empty."""
    if value is None:
        return None
    try:
        import math

        if isinstance(value, float) and math.isnan(value):
            return None
    except Exception:  # pragma: no cover
        pass
    s = str(value)
    if s.strip() == "":
        return None
    return s


def _parse_index(value) -> int | None:
    s = _cell(value)
    if s is None:
        return None
    try:
        return int(s)  # exact for any length; "3.0" (a float-typed column written out) falls through
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return None
    if not f.is_integer():
        return None
    return int(f)


def read_table(path: str | os.PathLike):
    """Read a TSV as strings (no NA conversion, so an option reading "None" stays text) and check its columns."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"benchmark file not found: {path}")
    try:
        # only "\n" ends a row: pandas' writer leaves a lone "\r" in a cell unquoted (CRLF files: stripped below)
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[], lineterminator="\n")
    except Exception as e:
        raise DatasetFormatError(f"cannot read {path} as a TSV file: {type(e).__name__}: {e}") from e
    if len(df.columns):
        df[df.columns[-1]] = df[df.columns[-1]].str.removesuffix("\r")
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if not any(c in df.columns for c in IMAGE_COLUMNS):
        missing.append("image (or image_path)")
    if not any(c in df.columns for c in OPTION_LETTERS):
        missing.append("option columns A, B, ...")
    if missing:
        raise DatasetFormatError(
            f"{path} does not have the VLMEvalKit multiple-choice layout: missing column(s) "
            f"{', '.join(missing)} (found: {', '.join(map(str, df.columns))})"
        )
    return df


def load_tsv(
    path: str | os.PathLike,
    language: str | None = None,
    *,
    verify_images: bool = True,
) -> tuple[list[Sample], list[BadRow]]:
    """Load and validate a benchmark TSV.

    ``language`` defaults to the file-name suffix. A per-row ``language``/``lang`` column, when present and
    non-empty, overrides it for that row. Returns ``(samples, bad_rows)`` in file order.
    """
    path = Path(path)
    df = read_table(path)
    file_language = None
    if language is not None:
        file_language = normalize_language(language)
    else:
        file_language = language_from_filename(path)
    lang_col = "language" if "language" in df.columns else ("lang" if "lang" in df.columns else None)
    if file_language is None and lang_col is None:
        raise DatasetFormatError(
            f"cannot tell the language of {path}: pass languages explicitly or name the file with a language "
            f"suffix (_en, _cn/_zh, _pt, _ar, _tr, _ru)"
        )
    letters = [c for c in OPTION_LETTERS if c in df.columns]
    records = df.to_dict("records")
    src = str(path)

    # Image lookup for VLMEvalKit-style references (short image field = index of the row holding the image).
    image_by_index: dict[str, str] = {}
    if "image" in df.columns:
        for r in records:
            idx = _cell(r.get("index"))
            img = _cell(r.get("image"))
            if idx is not None and img is not None and len(img.strip()) > _IMAGE_REFERENCE_MAX_LEN:
                image_by_index.setdefault(idx.strip(), img)

    samples: list[Sample] = []
    bad: list[BadRow] = []
    seen: set[int] = set()
    verified: dict[int, str | None] = {}  # id(b64 string) -> error

    def reject(idx, lang, reason):
        bad.append(BadRow(idx, lang, reason, src))
        logger.warning("skipping row index=%s (%s) in %s: %s", idx, lang, src, reason)

    for row_no, r in enumerate(records):
        raw_idx = _cell(r.get("index"))
        index = _parse_index(raw_idx)
        shown_idx = index if index is not None else (raw_idx if raw_idx is not None else f"row {row_no + 2}")
        lang = file_language
        if lang_col is not None and _cell(r.get(lang_col)) is not None:
            try:
                lang = normalize_language(_cell(r.get(lang_col)))
            except UnknownLanguageError:
                # counted against the file's language (if known); the bad code is in the reason
                reject(shown_idx, file_language, f"unknown language code {_cell(r.get(lang_col))!r}")
                continue
        if lang is None:
            reject(shown_idx, None, "no language code")
            continue
        if index is None:
            reject(shown_idx, lang, "missing or non-integer index")
            continue
        if index in seen:
            reject(index, lang, "duplicate index")
            continue
        question = _cell(r.get("question"))
        if question is None:
            reject(index, lang, "missing question")
            continue
        options = {L: _cell(r.get(L)) for L in letters}
        options = {L: v for L, v in options.items() if v is not None}
        if not options:
            reject(index, lang, "no options")
            continue
        answer = _cell(r.get("answer"))
        if answer is None:
            reject(index, lang, "missing answer")
            continue
        answer = answer.strip()
        if answer not in options:
            reject(index, lang, f"answer {answer!r} is not one of the options {''.join(options)}")
            continue
        image_b64 = None
        image_path = None
        img = _cell(r.get("image")) if "image" in df.columns else None
        if img is not None:
            img = img.strip()
            if len(img) <= _IMAGE_REFERENCE_MAX_LEN:
                ref = image_by_index.get(img)
                if ref is None:
                    reject(index, lang, f"image field {img!r} is neither base64 data nor the index of another row")
                    continue
                img = ref
            key = id(img)
            if key not in verified:
                try:
                    raw = decode_base64(img)
                    if verify_images:
                        _check_image_bytes(raw)
                    verified[key] = None
                except (binascii.Error, ValueError, OSError, SyntaxError) as e:
                    verified[key] = f"undecodable base64 image ({type(e).__name__}: {e})"
                except Exception as e:  # PIL raises various errors on garbage
                    verified[key] = f"undecodable base64 image ({type(e).__name__}: {e})"
            if verified[key] is not None:
                reject(index, lang, verified[key])
                continue
            image_b64 = img
        else:
            p = _cell(r.get("image_path")) if "image_path" in df.columns else None
            if p is None:
                reject(index, lang, "no image (empty image and image_path)")
                continue
            p = p.strip()
            if p.startswith("[") and p.endswith("]"):  # VLMEvalKit may store a list of paths
                inner = [x.strip().strip("'\"") for x in p[1:-1].split(",") if x.strip()]
                p = inner[0] if inner else ""
            candidate = Path(p).expanduser()
            if not candidate.is_absolute():
                candidate = path.parent / candidate
            if not candidate.is_file():
                reject(index, lang, f"image file not found: {candidate}")
                continue
            if verify_images:
                try:
                    _check_image_bytes(candidate.read_bytes())
                except Exception as e:
                    reject(index, lang, f"unreadable image file {candidate} ({type(e).__name__}: {e})")
                    continue
            image_path = candidate
        seen.add(index)
        samples.append(
            Sample(
                index=index,
                language=lang,
                question=question,
                options=options,
                answer=answer,
                hint=_cell(r.get("hint")),
                category=_cell(r.get("category")),
                l2_category=_cell(r.get("l2-category")) or _cell(r.get("l2_category")),
                image_b64=image_b64,
                image_path=image_path,
                source=src,
            )
        )
    return samples, bad
