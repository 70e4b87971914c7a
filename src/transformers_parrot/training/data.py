"""Training data for Parrot: the release's LLaVA JSON and conversational `datasets`, validated, normalised to one
schema and mixed by ratio.

Every loader yields rows of the same shape, the one TRL's vision collators read:

    {"id": str, "messages": [{"role": "system"|"user"|"assistant",
                              "content": [{"type": "image"|"text", "text": str|None}, ...]}, ...],
     "images": [image, ...]}

Image items carry no payload: TRL fills them, in order, from ``images``. Images of the LLaVA JSON stay file paths
(a `datasets.Image` column decodes them lazily), so a 665k-sample dataset costs no memory; every path is checked
when the sample is read, and a missing or unreadable image is reported with its path and either stops the run
(``on_error="raise"``) or skips the sample and counts it (``on_error="skip"``). Samples with an unknown role, an
empty conversation or an ``<image>`` count different from the number of images (an image without a tag, which
would be dropped, included) are handled the same way.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from ..models.parrot.processing_parrot import IMAGE_TOKEN

logger = logging.get_logger(__name__)

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant")
ON_ERROR = ("raise", "skip")


class ParrotDataError(ValueError):
    """A training sample that cannot be used; the message names the sample (source and id) and the reason."""


@dataclass
class DataReport:
    """Counts of samples read, kept and skipped (by reason) for one or more sources. Shared by lazy loaders: for
    streamed data the counts grow while training reads the data."""

    read: int = 0
    kept: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)  # the first few skip messages

    def skip(self, reason: str, message: str, max_examples: int = 20) -> None:
        """Count a skipped sample; the first `max_examples` are kept and warned, the rest only counted."""
        self.skipped[reason] += 1
        if len(self.examples) < max_examples:
            self.examples.append(message)
            logger.warning(
                "skipping sample: %s%s",
                message,
                "" if len(self.examples) < max_examples else " (further skips are only counted)",
            )

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"read {self.read}, kept {self.kept}, skipped {self.num_skipped} ({reasons})"


def _features():
    from datasets import Features, Image, List, Value

    content = List({"type": Value("string"), "text": Value("string")})
    return Features(
        {
            "id": Value("string"),
            "messages": List({"role": Value("string"), "content": content}),
            "images": List(Image()),
        }
    )


# ---------------------------------------------------------------------------------------------- validation
def check_image(path: str, where: str) -> None:
    """Raise ParrotDataError unless `path` is a readable image file."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ParrotDataError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ParrotDataError(f"{where}: unreadable image {path}: {error}") from error


def _text_items(text: str) -> tuple[list[dict], int]:
    """A turn's text with `<image>` tags → content items (images first, as Parrot's template renders them) and the
    number of tags. The newline that separates a tag from the text is dropped: the template writes its own."""
    count = text.count(IMAGE_TOKEN)
    if count:
        text = "\n".join(part.strip("\n") for part in text.split(IMAGE_TOKEN)).strip("\n")
    items = [{"type": "image", "text": None} for _ in range(count)]
    items.append({"type": "text", "text": text})
    return items, count


def _normalize_messages(messages: Any, num_images: int, where: str) -> list[dict]:
    """Conversational messages (string or structured contents) → the canonical schema, checked."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ParrotDataError(f"{where}: empty conversation")
    out, tags = [], 0
    for turn, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ParrotDataError(f"{where}: turn {turn} has unknown role {role!r} (expected one of {ROLES})")
        content = message.get("content")
        if isinstance(content, str):
            items, count = _text_items(content)
        elif isinstance(content, (list, tuple)):
            items, count = [], 0
            for item in content:
                kind = item.get("type") if isinstance(item, dict) else None
                if kind in ("image", "image_url"):
                    items.append({"type": "image", "text": None})
                    count += 1
                elif kind == "text":
                    if not isinstance(item.get("text") or "", str):
                        raise ParrotDataError(f"{where}: turn {turn} has a text item whose text is not a string")
                    sub, sub_count = _text_items(item.get("text") or "")
                    items.extend(sub)
                    count += sub_count
                else:
                    raise ParrotDataError(f"{where}: turn {turn} has a content item of unknown type {kind!r}")
        else:
            raise ParrotDataError(f"{where}: turn {turn} has no content")
        tags += count
        out.append({"role": role, "content": items})
    if not any(m["role"] == "assistant" for m in out):
        raise ParrotDataError(f"{where}: the conversation has no assistant turn to train on")
    if out[-1]["role"] != "assistant":
        raise ParrotDataError(f"{where}: the conversation ends with a {out[-1]['role']} turn, not an answer")
    if tags != num_images:  # an image without a tag would be dropped silently: every image needs its place
        raise ParrotDataError(
            f"{where}: {tags} {IMAGE_TOKEN} tag(s) in the conversation but {num_images} image(s) in the sample "
            f"(put one {IMAGE_TOKEN} where each image goes)"
        )
    return out


def convert_llava_sample(
    sample: dict, image_folder: str | os.PathLike | None, index: int, source: str = "", check_images: bool = True
) -> dict:
    """One LLaVA-JSON entry → a canonical row (images as absolute paths). Raises ParrotDataError naming the sample."""
    sample_id = str(sample.get("id", index)) if isinstance(sample, dict) else str(index)
    where = f"{source}sample {sample_id!r} (#{index})"
    if not isinstance(sample, dict):
        raise ParrotDataError(f"{where}: entry is not an object")
    image = sample.get("image")
    images = [] if image in (None, "", []) else ([image] if isinstance(image, str) else image)
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise ParrotDataError(f'{where}: "image" must be a path or a list of paths, got {image!r:.80}')
    paths = [p if os.path.isabs(p) or image_folder is None else os.path.join(image_folder, p) for p in images]
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ParrotDataError(f"{where}: empty conversation")
    messages = []
    for turn, message in enumerate(turns):
        speaker = message.get("from") if isinstance(message, dict) else None
        role = LLAVA_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise ParrotDataError(
                f'{where}: turn {turn} has unknown "from" role {speaker!r} (expected one of {sorted(LLAVA_ROLES)})'
            )
        value = message.get("value")
        if not isinstance(value, str):
            raise ParrotDataError(f'{where}: turn {turn} has no text "value"')
        messages.append({"role": role, "content": value})
    messages = _normalize_messages(messages, len(paths), where)
    if check_images:
        for path in paths:
            check_image(path, where)
    return {"id": sample_id, "messages": messages, "images": paths}


def _read_llava_entries(path: str | os.PathLike) -> list:
    path = str(path)
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            entries = []
            for number, line in enumerate(handle, 1):
                try:
                    entries.append(json.loads(line) if line.strip() else None)
                except ValueError as error:
                    raise ParrotDataError(f"{path}: line {number} is not valid JSON ({error})") from None
            return [entry for entry in entries if entry is not None]
        try:
            data = json.load(handle)
        except ValueError as error:
            raise ParrotDataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, list):
        raise ParrotDataError(f"{path}: a LLaVA JSON file holds a list of samples, got {type(data).__name__}")
    return data


def _to_dataset(rows: list[dict], features):
    """`rows` as a `datasets.Dataset` with `features`, also when every sample was skipped (no rows)."""
    from datasets import Dataset

    if not rows:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return Dataset.from_list(rows, features=features)


def _checked(rows: Iterable[tuple[int, Any]], convert, on_error: str, report: DataReport) -> Iterator[dict]:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    for index, raw in rows:
        report.read += 1
        try:
            row = convert(raw, index)
        except ParrotDataError as error:
            if on_error == "raise":
                raise
            reason = "image" if "image file" in str(error) or "unreadable image" in str(error) else "format"
            report.skip(reason, str(error))
            continue
        report.kept += 1
        yield row


def load_llava_json(
    path: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    on_error: str = "raise",
    check_images: bool = True,
    streaming: bool = False,
    report: DataReport | None = None,
):
    """The release's LLaVA JSON (or JSONL) → a `datasets.Dataset` (or `IterableDataset` with `streaming=True`).

    Image paths are relative to `image_folder`; entries without "image" are text-only. `on_error="raise"` stops at
    the first bad sample with an error naming it; `"skip"` drops it and counts it in `report` (a `DataReport`,
    also attached to the returned dataset as `.parrot_report` for in-memory datasets).
    """
    from datasets import IterableDataset

    report = report if report is not None else DataReport()
    source = f"{os.path.basename(str(path))}: "

    def convert(raw, index):
        return convert_llava_sample(raw, image_folder, index, source=source, check_images=check_images)

    if streaming:

        def generate(path=str(path)):
            yield from _checked(enumerate(_read_llava_entries(path)), convert, on_error, report)

        return IterableDataset.from_generator(generate, features=_features())
    rows = list(_checked(enumerate(_read_llava_entries(path)), convert, on_error, report))
    logger.info("%s%s", source, report.summary())
    dataset = _to_dataset(rows, _features())
    dataset.parrot_report = report
    return dataset


def _undecoded_images(dataset, columns):
    """Keep image columns undecoded (paths/bytes) while converting: decoding 665k images just to copy them is
    waste."""
    from datasets import Image, List

    for column in columns:
        if column in dataset.column_names:
            feature = dataset.features[column]
            if isinstance(feature, Image):
                dataset = dataset.cast_column(column, Image(decode=False))
            elif isinstance(getattr(feature, "feature", None), Image):
                dataset = dataset.cast_column(column, List(Image(decode=False)))
    return dataset


def _sample_images(example: dict, column: str, where: str, image_folder: str | None, check_images: bool) -> list:
    """A sample's images from `column` (or a single `image`): undecoded `{"path", "bytes": None}` dicts become
    paths, relative paths are resolved against `image_folder`, and every path is checked when `check_images`."""
    images = example.get(column)
    if images is None and "image" in example:
        images = [] if example["image"] in (None, "") else [example["image"]]
    images = [images] if isinstance(images, (str, dict)) else images
    if images is not None and not isinstance(images, (list, tuple)):
        raise ParrotDataError(f"{where}: {column!r} must be a list of images, got {type(images).__name__}")
    images = list(images or [])
    for j, image in enumerate(images):
        if image is None:
            raise ParrotDataError(f"{where}: image {j} is missing")
        if not isinstance(image, (str, dict)) and not hasattr(image, "mode"):
            raise ParrotDataError(f"{where}: image {j} is a {type(image).__name__}, not a path or an image")
        if isinstance(image, dict) and image.get("bytes") is None:
            image = image.get("path")
        if isinstance(image, str):
            if image_folder is not None and not os.path.isabs(image):
                image = os.path.join(image_folder, image)
            if check_images:
                check_image(image, where)
        images[j] = image
    return images


def normalize_conversational(
    dataset,
    on_error: str = "raise",
    check_images: bool = True,
    source: str = "",
    report: DataReport | None = None,
    messages_column: str = "messages",
    images_column: str = "images",
):
    """A conversational `datasets` dataset (messages + images/image, string or structured contents; Hub or
    local) → the canonical schema, validated. Works on `Dataset` and `IterableDataset`."""
    from datasets import Dataset

    report = report if report is not None else DataReport()
    where_prefix = f"{source}: " if source else ""

    def convert(example, index):
        sample_id = str(example.get("id", index))
        where = f"{where_prefix}sample {sample_id!r} (#{index})"
        images = _sample_images(example, images_column, where, None, check_images)
        messages = _normalize_messages(example.get(messages_column), len(images), where)
        return {"id": sample_id, "messages": messages, "images": images}

    if isinstance(dataset, Dataset):
        dataset = _undecoded_images(dataset, (images_column, "image"))
        rows = list(_checked(((i, ex) for i, ex in enumerate(dataset)), convert, on_error, report))
        out = _to_dataset(rows, _features())
        out.parrot_report = report
        return out

    def generate(dataset=dataset):
        yield from _checked(((i, ex) for i, ex in enumerate(dataset)), convert, on_error, report)

    from datasets import IterableDataset

    return IterableDataset.from_generator(generate, features=_features())


def load_source(
    spec: str,
    image_folder: str | None = None,
    split: str = "train",
    on_error: str = "raise",
    check_images: bool = True,
    streaming: bool = False,
    report: DataReport | None = None,
):
    """One data source by name: a LLaVA JSON/JSONL file, a local data file/folder `datasets` can read, or a Hub
    dataset id (``name`` or ``name:config``)."""
    from datasets import load_dataset

    if os.path.isfile(spec) and spec.endswith((".json", ".jsonl")):
        first = _peek_json(spec)
        if isinstance(first, dict) and "conversations" in first:
            return load_llava_json(
                spec, image_folder, on_error=on_error, check_images=check_images, streaming=streaming, report=report
            )
        dataset = load_dataset("json", data_files=spec, split=split, streaming=streaming)
    elif os.path.isfile(spec):
        extension = spec.rsplit(".", 1)[-1]
        dataset = load_dataset(
            {"jsonl": "json"}.get(extension, extension), data_files=spec, split=split, streaming=streaming
        )
    else:
        name, _, config = spec.partition(":")
        dataset = load_dataset(name, config or None, split=split, streaming=streaming)
    return normalize_conversational(dataset, on_error=on_error, check_images=check_images, source=spec, report=report)


def _peek_json(path: str):
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            line = handle.readline()
            return json.loads(line) if line.strip() else None
        data = json.load(handle)
    return data[0] if isinstance(data, list) and data else None


def mix_datasets(
    datasets: Sequence, ratios: Sequence[float] | None = None, seed: int = 0, stopping_strategy: str = "all_exhausted"
):
    """Mix sources by sampling ratio (`datasets.interleave_datasets`): each row comes from source i with
    probability ratios[i] / sum(ratios). Works on in-memory and streamed datasets alike."""
    from datasets import interleave_datasets

    datasets = list(datasets)
    if not datasets:
        raise ValueError("mix_datasets needs at least one dataset")
    if ratios is None:
        ratios = [1.0] * len(datasets)
    if len(ratios) != len(datasets) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"need one non-negative ratio per dataset ({len(datasets)}), got {list(ratios)}")
    if len(datasets) == 1:
        return datasets[0]
    total = float(sum(ratios))
    keep = [(d, r / total) for d, r in zip(datasets, ratios) if r > 0]
    return interleave_datasets(
        [d for d, _ in keep], probabilities=[p for _, p in keep], seed=seed, stopping_strategy=stopping_strategy
    )


def drop_images(dataset):
    """Text-only view of a dataset (MLAN's language-only setting for data that has images): removes the images and
    their placeholders."""

    def strip(example):
        messages = [
            {"role": m["role"], "content": [c for c in m["content"] if c["type"] != "image"]}
            for m in example["messages"]
        ]
        return {"messages": messages, "images": []}

    return dataset.map(strip)


def _preference_features():
    from datasets import Features, Image, List, Value

    content = List({"type": Value("string"), "text": Value("string")})
    messages = List({"role": Value("string"), "content": content})
    return Features(
        {"id": Value("string"), "prompt": messages, "chosen": messages, "rejected": messages, "images": List(Image())}
    )


def convert_preference_sample(
    example: dict, index: int, image_folder=None, source: str = "", check_images: bool = True
) -> dict:
    """One preference pair → {"id", "prompt": messages, "chosen": [assistant], "rejected": [assistant], "images"}.

    `prompt` is a string (one user turn) or a message list ending with a user turn; `chosen`/`rejected` are
    strings or one-assistant-message lists; images come from `images`/`image` (paths relative to `image_folder`,
    or decoded images)."""
    sample_id = str(example.get("id", index))
    where = f"{source + ': ' if source else ''}sample {sample_id!r} (#{index})"
    images = _sample_images(example, "images", where, image_folder, check_images)
    prompt = example.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ParrotDataError(f"{where}: empty prompt")
    # validate the prompt together with an answer, so the <image> count and roles are checked in one place
    answers = {}
    for key in ("chosen", "rejected"):
        value = example.get(key)
        if isinstance(value, str):
            value = [{"role": "assistant", "content": value}]
        if not isinstance(value, (list, tuple)) or len(value) != 1 or value[0].get("role") != "assistant":
            raise ParrotDataError(f"{where}: {key!r} must be a string or one assistant message")
        answers[key] = value
    full = _normalize_messages(list(prompt) + answers["chosen"], len(images), where)
    rejected = _normalize_messages(list(prompt) + answers["rejected"], len(images), where)
    if full[-1]["role"] != "assistant" or full[-2]["role"] != "user":
        raise ParrotDataError(f"{where}: the prompt must end with a user turn")
    return {"id": sample_id, "prompt": full[:-1], "chosen": full[-1:], "rejected": rejected[-1:], "images": images}


def normalize_preference(
    dataset,
    image_folder=None,
    on_error: str = "raise",
    check_images: bool = True,
    source: str = "",
    report: DataReport | None = None,
):
    """An image-grounded preference dataset (prompt, chosen, rejected, images) → the canonical preference schema
    TRL's DPO vision collator reads; bad pairs raise or are skipped and counted."""
    report = report if report is not None else DataReport()
    dataset = _undecoded_images(dataset, ("images", "image"))

    def convert(example, index):
        return convert_preference_sample(example, index, image_folder, source, check_images)

    rows = list(_checked(((i, ex) for i, ex in enumerate(dataset)), convert, on_error, report))
    out = _to_dataset(rows, _preference_features())
    out.parrot_report = report
    return out


__all__ = [
    "ParrotDataError",
    "DataReport",
    "check_image",
    "convert_llava_sample",
    "load_llava_json",
    "normalize_conversational",
    "load_source",
    "mix_datasets",
    "drop_images",
    "convert_preference_sample",
    "normalize_preference",
]
