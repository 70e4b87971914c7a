"""Running an evaluation: predictors (the model side) and the resumable evaluation loop."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

from transformers.utils.logging import get_logger

from ..cli import torch_dtype as resolve_dtype
from ..processing_parrot import IMAGE_TOKEN
from .data import (
    BENCHMARKS,
    LANGUAGES,
    BadRow,
    DatasetFormatError,
    Sample,
    benchmark_name_from_path,
    is_builtin_benchmark,
    language_from_filename,
    load_tsv,
    parse_languages,
    resolve_benchmark_file,
)
from .extraction import extract_choice
from .io_utils import PredictionStore, atomic_write_json
from .prompts import build_sample_prompt
from .scoring import score_benchmark

logger = get_logger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"
SKIPPED_FILE = "skipped.json"
CONFIG_FILE = "eval_config.json"


# --------------------------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PromptItem:
    """One generation request: an RGB image, the full question prompt, its language and row index."""

    image: Any
    prompt: str
    language: str
    index: int = -1


@runtime_checkable
class Predictor(Protocol):
    """Anything that answers a batch of prompts with one raw text per item, in order."""

    def predict(self, items: Sequence[PromptItem]) -> list[str]:  # pragma: no cover - protocol
        ...


class FunctionPredictor:
    """Adapts ``predict_fn(list of (image, prompt_text, language)) -> list[str]`` to :class:`Predictor`."""

    def __init__(self, predict_fn: Callable[[list[tuple]], Sequence[str]], name: str = "custom"):
        self.predict_fn = predict_fn
        self.name = name

    def predict(self, items: Sequence[PromptItem]) -> list[str]:
        return list(self.predict_fn([(it.image, it.prompt, it.language) for it in items]))


class TransformersPredictor:
    """Greedy batched generation with any transformers image-text-to-text model that has a chat template.

    The prompt is the processor's chat template applied to one user turn ``[image, text]`` with a generation
    prompt; inputs are left-padded; only the newly generated tokens are decoded (special tokens skipped).
    """

    def __init__(self, model, processor, max_new_tokens: int = 512, name: str | None = None, **generate_kwargs):
        self.model = model
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.generate_kwargs = generate_kwargs
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        tok = getattr(processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # fallback for processors that ignore the padding_side kwarg

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def chat_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (ValueError, AttributeError, TypeError) as e:
            image_token = getattr(self.processor, "image_token", None) or IMAGE_TOKEN
            logger.warning("processor has no usable chat template (%s); using '%s\\n{prompt}'", e, image_token)
            return f"{image_token}\n{prompt}"

    def _inputs(self, texts: list[str], images: list):
        try:
            return self.processor(
                images=images, text=texts, padding=True, padding_side="left", return_tensors="pt"
            )
        except TypeError:
            return self.processor(images=images, text=texts, padding=True, return_tensors="pt")

    def predict(self, items: Sequence[PromptItem]) -> list[str]:
        import torch

        texts = [self.chat_text(it.prompt) for it in items]
        images = [[it.image] for it in items]
        inputs = self._inputs(texts, images)
        device = getattr(self.model, "device", None)
        dtype = getattr(self.model, "dtype", None)
        moved = {}
        for k, v in dict(inputs).items():
            if isinstance(v, torch.Tensor):
                if device is not None:
                    v = v.to(device)
                if dtype is not None and torch.is_floating_point(v):
                    v = v.to(dtype)
            moved[k] = v
        tok = self.tokenizer
        pad_id = getattr(tok, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tok, "eos_token_id", None)
        kwargs = dict(do_sample=False, max_new_tokens=self.max_new_tokens)
        if pad_id is not None:
            kwargs["pad_token_id"] = pad_id
        kwargs.update(self.generate_kwargs)
        with torch.inference_mode():
            out = self.model.generate(**moved, **kwargs)
        if hasattr(out, "sequences"):
            out = out.sequences
        is_enc_dec = bool(getattr(getattr(self.model, "config", None), "is_encoder_decoder", False))
        if not is_enc_dec and "input_ids" in moved:
            out = out[:, moved["input_ids"].shape[1]:]
        decoder = self.processor if hasattr(self.processor, "batch_decode") else tok
        texts_out = decoder.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts_out]


def resolve_device(device: str | None = "auto") -> str:
    if device in (None, "auto"):
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # pragma: no cover
            return "cpu"
    return device


def load_model_and_processor(
    model_id: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
):
    """Load ``(model, processor)`` with the Auto classes (this package registers Parrot with them)."""
    import transformers

    torch_dtype = resolve_dtype(dtype or "auto")
    processor = transformers.AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            model_id, trust_remote_code=trust_remote_code, dtype=torch_dtype
        )
    except ValueError as error:  # config not mapped to an image-text-to-text class
        raise ValueError(f"cannot load {model_id!r} as an image-text-to-text model: {error}") from error
    model.to(resolve_device(device))
    model.eval()
    return model, processor


def load_predictor(
    model_id: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    max_new_tokens: int = 512,
) -> TransformersPredictor:
    model, processor = load_model_and_processor(
        model_id, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    return TransformersPredictor(model, processor, max_new_tokens=max_new_tokens, name=str(model_id))


# --------------------------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BenchmarkData:
    name: str
    circular: bool
    languages: list[str]
    samples: list[Sample]
    bad_rows: list[BadRow]
    files: dict[str, str]


def prepare_benchmark(
    benchmark: str,
    languages: str | Iterable[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    circular: bool | None = None,
    download: bool = True,
) -> BenchmarkData:
    """Resolve and load a benchmark (``mmmb``, ``mmbench`` or a TSV path) for the requested languages."""
    bench = str(benchmark)
    if is_builtin_benchmark(bench):
        spec = BENCHMARKS[bench.lower()]
        langs = parse_languages(languages)
        # Resolve every file first so a missing one fails before any work is done.
        files = {l: resolve_benchmark_file(spec.name, l, data_dir, download=download) for l in langs}
        samples: list[Sample] = []
        bad: list[BadRow] = []
        for l in langs:
            s, b = load_tsv(files[l], l)
            samples += s
            bad += b
        name = spec.name
        is_circular = spec.circular if circular is None else circular
    else:
        path = Path(bench).expanduser()
        if not path.is_file() and data_dir is not None and (Path(data_dir) / bench).is_file():
            path = Path(data_dir) / bench
        if not path.is_file():
            raise DatasetFormatError(
                f"benchmark {bench!r} is neither one of {', '.join(BENCHMARKS)} nor an existing TSV file"
            )
        requested = parse_languages(languages) if languages is not None else None
        file_lang = None
        if requested is not None and len(requested) == 1:
            file_lang = requested[0]
        s, b = load_tsv(path, file_lang)
        if requested is not None:
            keep = set(requested)
            s = [x for x in s if x.language in keep]
            b = [x for x in b if x.language in keep or x.language not in LANGUAGES]
        samples, bad = s, b
        langs = requested or sorted({x.language for x in samples}, key=LANGUAGES.index) or (
            [language_from_filename(path)] if language_from_filename(path) else []
        )
        files = {l: str(path) for l in langs}
        name = benchmark_name_from_path(path)
        if circular is None:
            is_circular = "mmbench" in name.lower() or any(x.index >= 1_000_000 for x in samples)
        else:
            is_circular = circular
    if limit is not None:
        counts: dict[str, int] = {}
        limited = []
        for s_ in samples:
            if counts.get(s_.language, 0) < limit:
                limited.append(s_)
                counts[s_.language] = counts.get(s_.language, 0) + 1
        samples = limited
    # Languages whose only rows were bad still appear, so their skipped count is reported.
    for b_ in bad:
        if b_.language in LANGUAGES and b_.language not in langs:
            langs.append(b_.language)
    langs = sorted(set(langs), key=LANGUAGES.index)
    return BenchmarkData(name, bool(is_circular), langs, samples, bad, {k: str(v) for k, v in files.items()})


# --------------------------------------------------------------------------------------------------------------
# Evaluation loop
# --------------------------------------------------------------------------------------------------------------


class EvaluationConfigError(RuntimeError):
    """The output folder holds predictions made with a different configuration."""


def make_record(benchmark: str, sample: Sample, prediction: str) -> dict:
    choice = extract_choice(prediction, sample.options)
    return {
        "benchmark": benchmark,
        "language": sample.language,
        "index": sample.index,
        "prediction": prediction,
        "choice": choice,
        "answer": sample.answer,
        "hit": choice is not None and choice == sample.answer,
        "category": sample.category,
        "l2-category": sample.l2_category,
    }


def _batches(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _check_config(output_dir: Path, config: dict, overwrite: bool) -> None:
    path = output_dir / CONFIG_FILE
    preds = output_dir / PREDICTIONS_FILE
    if overwrite:
        for p in (preds, output_dir / RESULTS_FILE, output_dir / SKIPPED_FILE):
            if p.exists():
                p.unlink()
    elif path.exists() and preds.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        diff = {k: (old.get(k), v) for k, v in config.items() if k in old and old.get(k) != v}
        if diff:
            raise EvaluationConfigError(
                f"{output_dir} holds predictions made with a different configuration "
                + ", ".join(f"{k}: {a!r} != {b!r}" for k, (a, b) in diff.items())
                + "; use another --output folder or --overwrite"
            )
    atomic_write_json(path, config)


def evaluate(
    model=None,
    processor=None,
    *,
    predictor: Predictor | None = None,
    predict_fn: Callable[[list[tuple]], Sequence[str]] | None = None,
    benchmark: str | Sequence[str] = "mmmb",
    languages: str | Iterable[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "parrot_eval_output",
    batch_size: int = 8,
    max_new_tokens: int = 512,
    limit: int | None = None,
    model_name: str | None = None,
    circular: bool | None = None,
    download: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    write_reports: bool = True,
) -> dict:
    """Evaluate a model on MMMB / multilingual MMBench / a VLMEvalKit multiple-choice TSV.

    The model side is one of: ``model`` + ``processor`` (transformers objects, wrapped in
    :class:`TransformersPredictor`), a :class:`Predictor`, or a ``predict_fn(list of (image, prompt, language))
    -> list[str]``. ``benchmark`` may be a name, a TSV path, a :class:`BenchmarkData` from :func:`prepare_benchmark`, or a
    list of them.

    Predictions are appended (fsynced) to ``{output_dir}/predictions.jsonl`` after every batch; rerunning the
    same call skips rows already predicted. Returns the results dict
    ``{benchmark: {language: {"overall", "category", "l2-category", "n", "skipped", ...}}}`` (percent) for the
    benchmarks of this call; ``results.json`` in the folder also keeps benchmarks evaluated earlier there.
    """
    given = sum(x is not None for x in (predictor, predict_fn)) + (model is not None)
    if given != 1:
        raise ValueError("pass exactly one of: model (+ processor), predictor, predict_fn")
    if model is not None:
        if processor is None:
            raise ValueError("a processor is needed with a model")
        predictor = TransformersPredictor(model, processor, max_new_tokens=max_new_tokens, name=model_name)
    elif predict_fn is not None:
        predictor = FunctionPredictor(predict_fn, name=model_name or "custom")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    name = model_name or getattr(predictor, "name", None) or type(predictor).__name__

    benchmarks = [benchmark] if isinstance(benchmark, (str, os.PathLike, BenchmarkData)) else list(benchmark)
    # Load (and validate) all data before touching the output folder or the model.
    datas = [
        b if isinstance(b, BenchmarkData)
        else prepare_benchmark(str(b), languages, data_dir, limit=limit, circular=circular, download=download)
        for b in benchmarks
    ]

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_config(output_dir, {"model": str(name), "max_new_tokens": int(max_new_tokens)}, overwrite)
    store = PredictionStore(output_dir / PREDICTIONS_FILE)

    try:
        from tqdm.auto import tqdm
    except Exception:  # pragma: no cover
        tqdm = None

    results: dict[str, dict] = {}
    skipped_report: dict[str, list[dict]] = {}
    ordered_records: list[dict] = []
    bar = None  # one progress bar (with its ETA) for every file and language of this call
    if tqdm is not None and progress:
        names = sorted({data.name for data in datas})
        bar = tqdm(total=sum(len(data.samples) for data in datas), desc=names[0] if len(names) == 1 else "evaluate",
                   unit="q", dynamic_ncols=True)
    for data in datas:
        runtime_bad: list[BadRow] = []
        todo = [s for s in data.samples if (data.name, s.language, s.index) not in store]
        done = len(data.samples) - len(todo)
        if done:
            logger.info("%s: %d of %d rows already predicted in %s", data.name, done, len(data.samples), output_dir)
        if bar is not None:
            bar.update(done)
        try:
            for batch in _batches(todo, batch_size):
                items: list[PromptItem] = []
                kept: list[Sample] = []
                for s in batch:
                    try:
                        image = s.load_image()
                    except Exception as e:
                        reason = f"image cannot be loaded ({type(e).__name__}: {e})"
                        logger.warning("skipping row index=%s (%s): %s", s.index, s.language, reason)
                        runtime_bad.append(BadRow(s.index, s.language, reason, s.source))
                        continue
                    items.append(PromptItem(image, build_sample_prompt(s), s.language, s.index))
                    kept.append(s)
                if items:
                    outputs = predictor.predict(items)
                    if len(outputs) != len(items):
                        raise RuntimeError(
                            f"predictor returned {len(outputs)} answers for a batch of {len(items)} prompts"
                        )
                    store.append(
                        make_record(data.name, s, "" if o is None else str(o)) for s, o in zip(kept, outputs)
                    )
                if bar is not None:
                    bar.update(len(batch))
        except BaseException:
            if bar is not None:
                bar.close()
            raise

        bad_keys = {(b.language, b.index) for b in runtime_bad}
        records = []
        for s in data.samples:
            if (s.language, s.index) in bad_keys:
                continue
            stored = store.get((data.name, s.language, s.index))
            # Re-derive choice/hit from the raw text so the scoring always follows the current rules.
            records.append(make_record(data.name, s, stored["prediction"]))
        ordered_records += records
        all_bad = list(data.bad_rows) + runtime_bad
        skipped_counts: dict[str, int] = {}
        for b in all_bad:
            if b.language in LANGUAGES:
                skipped_counts[b.language] = skipped_counts.get(b.language, 0) + 1
        # Several files of one benchmark (e.g. `mmmb_en.tsv,mmmb_ar.tsv`) share its name: merge their languages.
        results.setdefault(data.name, {}).update(
            score_benchmark(records, data.circular, skipped_counts, data.languages)
        )
        skipped_report.setdefault(data.name, []).extend(b.to_dict() for b in all_bad)
        if all_bad:
            logger.warning(
                "%s: skipped %d bad row(s): %s",
                data.name,
                len(all_bad),
                ", ".join(f"{b.language}:{b.index} ({b.reason})" for b in all_bad[:20])
                + (" ..." if len(all_bad) > 20 else ""),
            )

    if bar is not None:
        bar.close()
    store.finalize(ordered_records)
    if write_reports:
        from .report import write_reports as _write_reports

        _write_reports(output_dir, results, skipped=skipped_report, model_name=str(name))
    return results
