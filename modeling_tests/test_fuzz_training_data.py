"""Property-based tests (hypothesis) of the training-data readers: LLaVA JSON/JSONL entries of any JSON shape and
conversational rows (string or structured contents, images as paths) either become rows of the canonical schema that
keep every word and one image item per image, or raise `ParrotDataError` naming the sample; with `on_error="skip"`
nothing else escapes. Files that are not JSON name the file and line.

Deterministic: `derandomize=True`, bounded `max_examples`.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from fixtures import make_image
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from transformers_parrot.training.data import (
    ROLES,
    ParrotDataError,
    convert_llava_sample,
    load_llava_json,
    normalize_conversational,
)

FUZZ = settings(
    derandomize=True,
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ_DATASETS = settings(FUZZ, max_examples=40)  # each example builds a `datasets.Dataset` (tens of ms)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
turn_text = st.lists(
    st.sampled_from(["<image>", "<image>\n", "\n", "What is", " this?", "圆圈", "", "<imag"]) | st.text(max_size=6),
    max_size=6,
).map("".join)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in ("a.png", "b.png"):
        make_image(1, (6, 5)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _words(text: str) -> str:
    return text.replace("<image>", "").replace("\n", "")


def _check_row(row: dict, texts: list[str], n_images: int) -> None:
    """A converted row: canonical roles, ends with an answer, one image item per image, every word kept."""
    messages = row["messages"]
    assert all(m["role"] in ROLES for m in messages) and messages[-1]["role"] == "assistant"
    items = [item for m in messages for item in m["content"]]
    assert sum(item["type"] == "image" for item in items) == n_images == len(row["images"])
    assert all(item["type"] in ("image", "text") for item in items)
    kept = ["".join(_words(item["text"]) for item in m["content"] if item["type"] == "text") for m in messages]
    assert kept == [_words(t) for t in texts]


plain_text = (
    st.lists(
        st.sampled_from(["\n", "What is", " this?", "圆圈", "", "<imag", "image>"]) | st.text(max_size=6), max_size=4
    )
    .map("".join)
    .map(lambda t: t.replace("<image>", ""))
)
IMAGE_FIELDS = [None, "", [], "a.png", ["a.png", "b.png"], "missing.png", "broken.png"]


@st.composite
def conversation(draw, user: str, assistant: str, n_tags: int) -> list[tuple[str, str]]:
    """(speaker, text) turns: an optional system turn, user/assistant pairs, `n_tags` `<image>` tags in user turns."""
    pairs = draw(st.integers(1, 3))
    turns = [("system", draw(plain_text))] if draw(st.booleans()) else []
    for _ in range(pairs):
        turns += [(user, draw(plain_text)), (assistant, draw(plain_text))]
    for _ in range(n_tags):
        i = draw(st.sampled_from([i for i, (who, _) in enumerate(turns) if who == user]))
        who, text = turns[i]
        at = draw(st.integers(0, len(text)))
        turns[i] = (who, text[:at] + draw(st.sampled_from(["<image>", "<image>\n", "\n<image>"])) + text[at:])
    return turns


def _mutate(draw, value):
    """`value` (nested lists/dicts) with, now and then, one part replaced by arbitrary JSON."""
    if not draw(st.sampled_from([False, False, True])):
        return value
    paths, stack = [], [()]
    while stack:
        path = stack.pop()
        paths.append(path)
        node = value
        for key in path:
            node = node[key]
        if isinstance(node, dict):
            stack += [(*path, key) for key in node]
        elif isinstance(node, list):
            stack += [(*path, i) for i in range(len(node))]
    path = draw(st.sampled_from(paths))
    replacement = draw(json_values)
    if not path:
        return replacement
    node = value
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = replacement
    return value


@st.composite
def llava_entries(draw):
    """A LLaVA entry: usually well-formed (tag count off now and then), one part replaced by arbitrary JSON at times."""
    image = copy.deepcopy(draw(st.sampled_from(IMAGE_FIELDS)))  # `_mutate` edits the entry in place
    n_images = 0 if image in (None, "", []) else 1 if isinstance(image, str) else len(image)
    n_tags = draw(st.sampled_from([n_images, n_images, n_images, n_images + 1, max(n_images - 1, 0)]))
    user, assistant = draw(st.sampled_from([("human", "gpt"), ("user", "assistant"), ("human", "robot")]))
    turns = [{"from": who, "value": text} for who, text in draw(conversation(user, assistant, n_tags))]
    entry = {"id": draw(st.text(max_size=4) | st.integers()), "conversations": turns}
    if image is not None:
        entry["image"] = image
    return _mutate(draw, entry)


@FUZZ
@given(entry=llava_entries())
def test_llava_entries_convert_or_name_the_sample(entry, image_folder):
    try:
        row = convert_llava_sample(entry, image_folder, index=7, source="fuzz.json: ")
    except ParrotDataError as error:
        assert str(error).startswith("fuzz.json: sample ") and "(#7)" in str(error)
        event("refused")
        return
    event("converted")
    image = entry.get("image")
    n_images = 0 if image in (None, "", []) else 1 if isinstance(image, str) else len(image)
    _check_row(row, [t["value"] for t in entry["conversations"]], n_images)
    assert all(Path(p).is_file() for p in row["images"])


@FUZZ_DATASETS
@given(
    entries=st.lists(llava_entries(), max_size=5),
    jsonl=st.booleans(),
    garbage=st.sampled_from([None, None, "{not json", "[1, 2", "\x00", '{"a": 1}']),
)
def test_llava_files_skip_bad_samples_and_count_them(entries, jsonl, garbage, image_folder):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("data.jsonl" if jsonl else "data.json")
        lines = [json.dumps(e) for e in entries] + ([garbage] if garbage is not None else [])
        path.write_text("\n".join(lines) if jsonl else (json.dumps(entries) if garbage is None else garbage))
        try:
            dataset = load_llava_json(path, image_folder, on_error="skip")
        except ParrotDataError as error:  # the file itself is unreadable: it names the file (and line)
            assert garbage is not None and path.name in str(error)
            if jsonl:
                assert f"line {len(entries) + 1}" in str(error)
            return
    report = dataset.parrot_report
    assert report.read == report.kept + report.num_skipped
    assert len(dataset) == report.kept
    for row in dataset:
        assert row["messages"][-1]["role"] == "assistant"


@st.composite
def conversational_rows(draw):
    """A conversational row (string or structured contents), usually well-formed, mutated now and then."""
    images = draw(st.sampled_from([[], ["a.png"], ["a.png", "b.png"], ["missing.png"], ["broken.png"], "a.png"]))
    n_images = 1 if isinstance(images, str) else len(images)
    n_tags = draw(st.sampled_from([n_images, n_images, n_images, n_images + 1]))
    roles = draw(st.sampled_from([("user", "assistant")] * 3 + [("user", "tool")]))
    messages, structured = [], draw(st.booleans())  # one kind per row: Arrow stores one type per column
    for who, text in draw(conversation(*roles, n_tags=n_tags)):
        if structured:
            parts = text.split("<image>")
            content = [{"type": "text", "text": parts[0]}]
            for part in parts[1:]:
                content += [
                    {"type": draw(st.sampled_from(["image", "image_url"])), "text": None},
                    {"type": "text", "text": part},
                ]
        else:
            content = text
        messages.append({"role": who, "content": content})
    return _mutate(draw, {"id": "x", "messages": messages, "images": images})


def _expected_texts(messages) -> list[str]:
    texts = []
    for m in messages:
        content = m["content"]
        texts.append(
            content
            if isinstance(content, str)
            else "".join(item.get("text") or "" for item in content if item.get("type") == "text")
        )
    return texts


@FUZZ_DATASETS
@given(row=conversational_rows())
def test_conversational_rows_convert_or_name_the_sample(row, image_folder):
    from datasets import Dataset

    if not isinstance(row, dict) or not row:  # a dataset row is a mapping of columns
        return
    images = row.get("images")
    if isinstance(images, list) and all(isinstance(i, str) for i in images):
        row = {**row, "images": [str(image_folder / i) for i in images]}
    elif isinstance(images, str):
        row = {**row, "images": str(image_folder / images)}
    try:
        dataset = Dataset.from_list([row])
        stored = dataset[0]  # what the reader sees (Arrow fills missing struct keys with None)
    except Exception as error:  # a shape Arrow cannot store as a column is not a dataset anyone can pass
        event(f"not storable by Arrow ({type(error).__name__})")
        return
    try:
        out = normalize_conversational(dataset, source="fuzz")
    except ParrotDataError as error:
        assert str(error).startswith("fuzz: sample ")
        event("refused")
        return
    event("converted")
    (converted,) = out
    stored_images = stored["images"] if isinstance(stored["images"], list) else [stored["images"]]
    _check_row(
        {"messages": converted["messages"], "images": stored_images},
        _expected_texts(stored["messages"]),
        len(stored_images),
    )
    assert len(normalize_conversational(dataset, source="fuzz", on_error="skip")) == 1


def test_regressions_found_by_fuzzing(image_folder, tmp_path):
    """Each of these raised TypeError/AttributeError/KeyError (or a datasets error) instead of naming the sample."""
    turns = [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "ok"}]
    for bad_image in ({"path": "a.png"}, False, [None], [3]):
        with pytest.raises(ParrotDataError, match=r"sample 's' \(#0\): \"image\" must be a path or a list of paths"):
            convert_llava_sample({"id": "s", "image": bad_image, "conversations": turns}, image_folder, 0)
    with pytest.raises(ParrotDataError, match=r"turn 0 has unknown \"from\" role \['human'\]"):
        convert_llava_sample({"id": "s", "conversations": [{"from": ["human"], "value": "x"}]}, image_folder, 0)
    from datasets import Dataset

    rows = Dataset.from_list(
        [
            {
                "messages": [{"role": "user", "content": ["just a string"]}, {"role": "assistant", "content": ["ok"]}],
                "images": [],
            }
        ]
    )
    with pytest.raises(ParrotDataError, match="turn 0 has a content item of unknown type None"):
        normalize_conversational(rows)
    with pytest.raises(ParrotDataError, match="'images' must be a list of images, got int"):
        normalize_conversational(
            Dataset.from_list([{"messages": [{"role": "assistant", "content": "x"}], "images": 3}])
        )
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(json.dumps({"id": 1, "conversations": turns}) + "\n{broken\n")
    with pytest.raises(ParrotDataError, match=r"data.jsonl: line 2 is not valid JSON"):
        load_llava_json(jsonl, image_folder)
    empty = tmp_path / "all_bad.json"  # every sample skipped: an empty dataset with the schema, not a crash
    empty.write_text(json.dumps([{"id": 1, "conversations": []}]))
    dataset = load_llava_json(empty, image_folder, on_error="skip")
    assert len(dataset) == 0 and dataset.column_names == ["id", "messages", "images"]
    assert dataset.parrot_report.num_skipped == 1
