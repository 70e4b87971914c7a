"""Property-based tests (hypothesis) of the benchmark TSV reader (`evaluation.data.load_tsv`, VLMEvalKit's
multiple-choice layout): rows written the way VLMEvalKit writes them (pandas, tab-separated) with any text in the
question and options, good and broken images, odd indexes and answers come back exactly (every kept sample carries
its text unchanged, every other row is a `BadRow` with a reason), and arbitrary bytes in a `.tsv` give samples or a
`DatasetFormatError`, never another exception.

Deterministic: `derandomize=True`, bounded `max_examples`.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transformers_parrot.evaluation.data import DatasetFormatError, load_tsv

FUZZ = settings(
    derandomize=True, max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
LETTERS = "ABCD"


def _png_b64(seed: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (6 + seed % 5, 4), (seed % 256, 40, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


GOOD_IMAGES = [_png_b64(seed) for seed in range(4)]
BROKEN_IMAGES = [
    "not base64 at all!",
    base64.b64encode(b"GIF89a but not really a gif, just text").decode(),
    GOOD_IMAGES[0][: len(GOOD_IMAGES[0]) // 2],
]

# any text a question or option may hold: tabs, newlines, quotes, "NA"/"None" that must stay text, RTL and CJK
cell_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20) | st.sampled_from(
    ["None", "NA", "nan", "N/A", "null", '"quoted"', "a\tb", "line\nbreak", "  ", "", "0", "1.0", "ما لون", "圆圈"]
)


@st.composite
def rows(draw):
    """(row dict as written, expected kept sample fields or the reason words of its rejection)."""
    index = draw(st.integers(0, 3_000_000) | st.sampled_from(["", "1.5", "x", "inf", "nan", "12345678901234567891"]))
    question = draw(cell_text)
    options = {letter: draw(cell_text) for letter in LETTERS}
    answer = draw(st.sampled_from([*LETTERS, "a", "E", "", " B "]))
    image = draw(st.sampled_from(["good", "good", "good", "broken", "empty"]))
    row = {
        "index": index,
        "question": question,
        **options,
        "answer": answer,
        "category": draw(cell_text),
        "image": draw(st.sampled_from(GOOD_IMAGES))
        if image == "good"
        else draw(st.sampled_from(BROKEN_IMAGES))
        if image == "broken"
        else "",
    }
    return row


def _expected(row: dict, seen: set[int]) -> dict | str:
    """An independent reading of one row: the kept fields, or a word of the reason it must be refused."""
    raw = str(row["index"]).strip()
    if not raw.lstrip("-").isdigit():
        return "index"
    index = int(raw)
    if index in seen:
        return "duplicate"
    if not row["question"].strip():
        return "question"
    options = {letter: row[letter] for letter in LETTERS if row[letter].strip()}
    if not options:
        return "options"
    answer = row["answer"].strip()
    if not answer:
        return "answer"
    if answer not in options:
        return "not one of the options"
    if not row["image"]:
        return "no image"
    if row["image"] in BROKEN_IMAGES:
        return "image"
    seen.add(index)
    return {
        "index": index,
        "question": row["question"],
        "options": options,
        "answer": answer,
        "category": row["category"] if row["category"].strip() else None,
        "image_b64": row["image"],
    }


@FUZZ
@given(table=st.lists(rows(), min_size=1, max_size=8))
def test_rows_come_back_exactly_or_as_bad_rows(table):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz_en.tsv"
        pd.DataFrame(table).to_csv(path, sep="\t", index=False)  # as VLMEvalKit writes its TSVs
        samples, bad = load_tsv(path)
    seen: set[int] = set()
    expected = [_expected(row, seen) for row in table]
    kept = [e for e in expected if isinstance(e, dict)]
    assert len(samples) + len(bad) == len(table)
    got = [
        {
            "index": s.index,
            "question": s.question,
            "options": s.options,
            "answer": s.answer,
            "category": s.category,
            "image_b64": s.image_b64,
        }
        for s in samples
    ]
    assert got == kept
    reasons = [e for e in expected if isinstance(e, str)]
    assert len(reasons) == len(bad)
    for reason, row in zip(reasons, bad):
        assert reason in row.reason, (reason, row.reason)
        assert row.language == "en" and row.source.endswith("fuzz_en.tsv")
    for sample in samples:
        assert sample.load_image().mode == "RGB"


@FUZZ
@given(
    content=st.binary(max_size=300)
    | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.lists(
        st.sampled_from(
            ["index", "question", "A", "B", "answer", "image", "\t", "\n", "0", "x", '"', GOOD_IMAGES[0], "\r"]
        ),
        max_size=40,
    ).map(lambda p: "".join(p).encode())
)
def test_any_bytes_give_samples_or_a_format_error(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "garbage_en.tsv"
        path.write_bytes(content)
        try:
            samples, bad = load_tsv(path)
        except DatasetFormatError as error:
            assert "garbage_en.tsv" in str(error)
            return
    for sample in samples:
        assert sample.question.strip() and sample.answer in sample.options


def test_lone_carriage_return_and_long_index(tmp_path):
    """Regressions found by the fuzzer: a lone "\\r" in a cell (pandas writes it unquoted) split the row in two, and
    an index past 2**53 came back rounded through float."""
    row = {
        "index": "12345678901234567891",
        "question": "q\rstill q",
        "A": "x",
        "B": "y\r",
        "answer": "B",
        "image": GOOD_IMAGES[1],
    }
    path = tmp_path / "cr_en.tsv"
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False)
    (sample,), bad = load_tsv(path)
    assert not bad and sample.index == 12345678901234567891
    assert sample.question == "q\rstill q" and sample.options == {"A": "x", "B": "y\r"}
    crlf = tmp_path / "crlf_en.tsv"  # a file saved with Windows line ends: the last column loses only the "\r"
    pd.DataFrame([row]).to_csv(crlf, sep="\t", index=False, lineterminator="\r\n")
    (sample,), bad = load_tsv(crlf)
    assert not bad and sample.image_b64 == GOOD_IMAGES[1] and sample.answer == "B"
