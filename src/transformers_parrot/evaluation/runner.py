"""Running an evaluation: predictors (the model side) and the resumable evaluation loop."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from transformers.utils.logging import get_logger

from ..benchmark_specs import BENCHMARKS, is_builtin_benchmark
from ..cli_utils import torch_dtype as resolve_dtype
from ..languages import LANGUAGES
from .data import (
    BadRow,
    DatasetFormatError,
    Sample,
    benchmark_name_from_path,
    language_from_filename,
    load_tsv,
    parse_languages,
    resolve_benchmark_file,
)
from .distributed import RankContext, launched_local_rank, launched_world_size
from .extraction import extract_choice
from .io_utils import PredictionStore, atomic_write_json
from .progress import RunProgress
from .prompts import PromptItem, build_sample_prompt, chat_text
from .scoring import score_benchmark
from .vllm_predictor import VLLMPredictor

logger = get_logger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
RANK_PREDICTIONS_PATTERN = "predictions.rank{rank}.jsonl"
"""Where rank ``rank`` of a data parallel run appends its rows; rank 0 merges them into PREDICTIONS_FILE."""
RESULTS_FILE = "results.json"
SKIPPED_FILE = "skipped.json"
CONFIG_FILE = "eval_config.json"
BACKENDS = ("hf", "vllm")
DEFAULT_BATCH_SIZE = 8


# --------------------------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------------------------


class EvaluationConfigError(RuntimeError):
    """A configuration that cannot run: options that exclude each other, or an output folder holding predictions
    made with a different configuration."""


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
        return chat_text(self.processor, prompt)

    def _inputs(self, texts: list[str], images: list):
        try:
            return self.processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
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
            out = out[:, moved["input_ids"].shape[1] :]
        decoder = self.processor if hasattr(self.processor, "batch_decode") else tok
        texts_out = decoder.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts_out]


def resolve_device(device: str | None = "auto") -> str:
    """The device this process runs on: ``auto`` is CUDA when there is one, else CPU. Under a launcher with several
    processes, ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` (one GPU per process)."""
    import torch

    several = launched_world_size() > 1
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if several and device.startswith("cuda"):
        if device != "cuda":
            raise EvaluationConfigError(
                f"--device {device} would put all {launched_world_size()} processes on one GPU; use --device cuda "
                "(or auto): each process takes cuda:LOCAL_RANK"
            )
        device = f"cuda:{launched_local_rank()}"
        torch.cuda.set_device(device)
    return device


def load_model_and_processor(
    model_id: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    quantization_config: Any = None,
):
    """Load ``(model, processor)`` with the Auto classes (this package registers Parrot with them).

    ``device_map="auto"``: accelerate places the model across the visible GPUs (``device`` must stay ``auto``).
    ``quantization_config`` (e.g. a ``BitsAndBytesConfig``): quantized loading onto ``device``.
    """
    import transformers

    if device_map is not None:
        if device_map != "auto":
            raise EvaluationConfigError(f"--device_map takes 'auto' only, got {device_map!r}")
        if device not in (None, "auto"):
            raise EvaluationConfigError("--device_map auto places the model itself: leave out --device")
        if launched_world_size() > 1:
            raise EvaluationConfigError(
                "--device_map auto spreads one model over all visible GPUs, which data parallel processes would share: "
                "run one process with --device_map auto, or one process per GPU without it"
            )
    torch_dtype = resolve_dtype(dtype or "auto")
    processor = transformers.AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    load_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": torch_dtype}
    placed = device_map is not None or quantization_config is not None
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    else:
        device = resolve_device(device)
        if quantization_config is not None:
            load_kwargs["device_map"] = {"": device}  # quantized weights are made on their device, never moved
    if quantization_config is not None:
        load_kwargs["quantization_config"] = quantization_config
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(model_id, **load_kwargs)
    except ValueError as error:  # config not mapped to an image-text-to-text class
        raise ValueError(f"cannot load {model_id!r} as an image-text-to-text model: {error}") from error
    if not placed:
        model.to(device)
    model.eval()
    return model, processor


def load_predictor(
    model_id: str,
    *,
    backend: str = "hf",
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    max_new_tokens: int = 512,
    **backend_kwargs: Any,
) -> Predictor:
    """A predictor for a saved model: ``hf`` (:class:`TransformersPredictor`; ``device_map``,
    ``quantization_config``) or ``vllm`` (:class:`VLLMPredictor`; ``tensor_parallel_size``, ``max_model_len``,
    ``gpu_memory_utilization`` and other ``vllm.LLM`` arguments)."""
    if backend not in BACKENDS:
        raise EvaluationConfigError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
    if backend == "vllm":
        if launched_world_size() > 1:
            raise EvaluationConfigError(
                "--backend vllm runs as one process that drives its own devices: start it without torchrun/accelerate "
                "and use --tensor_parallel_size N to use N GPUs"
            )
        if device not in (None, "auto"):
            raise EvaluationConfigError("--backend vllm picks its devices itself: leave out --device")
        return VLLMPredictor(
            model_id, max_new_tokens=max_new_tokens, dtype=dtype, trust_remote_code=trust_remote_code, **backend_kwargs
        )
    model, processor = load_model_and_processor(
        model_id, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **backend_kwargs
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
        langs = (
            requested
            or sorted({x.language for x in samples}, key=LANGUAGES.index)
            or ([language_from_filename(path)] if language_from_filename(path) else [])
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
        for p in (preds, output_dir / RESULTS_FILE, output_dir / SKIPPED_FILE, *_rank_files(output_dir)):
            if p.exists():
                p.unlink()
    elif path.exists() and (preds.exists() or _rank_files(output_dir)):
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


def _rank_files(output_dir: Path) -> list[Path]:
    """Per-rank prediction files present in the folder (left by a data parallel run, of any number of ranks)."""
    return sorted(output_dir.glob(RANK_PREDICTIONS_PATTERN.format(rank="*")))


def _merge_rank_files(store: PredictionStore, output_dir: Path) -> None:
    """Move the rows of every per-rank file into ``store`` (fsynced), then delete those files."""
    for path in _rank_files(output_dir):
        rank_store = PredictionStore(path)
        store.append(r for k, r in rank_store.records.items() if k not in store)
        path.unlink()


def _prompt_items(samples: Iterable[Sample], bad: list[BadRow]) -> Iterator[tuple[Sample, PromptItem]]:
    """``(sample, prompt item)`` with the image loaded; a row whose image fails to load goes to ``bad`` instead."""
    for s in samples:
        try:
            image = s.load_image()
        except Exception as e:
            reason = f"image cannot be loaded ({type(e).__name__}: {e})"
            logger.warning("skipping row index=%s (%s): %s", s.index, s.language, reason)
            bad.append(BadRow(s.index, s.language, reason, s.source))
            continue
        yield s, PromptItem(image, build_sample_prompt(s), s.language, s.index)


def _predict_rows(
    predictor, name: str, samples: list[Sample], batch_size: int, store: PredictionStore, progress: RunProgress
) -> list[BadRow]:
    """Predict ``samples`` into ``store``; returns the rows whose image failed to load."""
    bad: list[BadRow] = []
    stream = getattr(predictor, "predict_stream", None)
    if stream is not None:  # the engine schedules the requests itself: feed it every row, save each answer when done
        by_key: dict[tuple, Sample] = {}

        def items() -> Iterator[PromptItem]:
            for s, item in _prompt_items(samples, bad):
                by_key[(item.language, item.index)] = s
                yield item

        seen_bad = 0
        for finished in stream(items()):
            store.append(
                make_record(name, by_key.pop((it.language, it.index)), "" if o is None else str(o))
                for it, o in finished
            )
            progress.advance(len(finished) + len(bad) - seen_bad)
            seen_bad = len(bad)
        progress.advance(len(bad) - seen_bad)
        return bad
    for batch in _batches(samples, batch_size):
        pairs = list(_prompt_items(batch, bad))
        if pairs:
            outputs = predictor.predict([item for _, item in pairs])
            if len(outputs) != len(pairs):
                raise RuntimeError(f"predictor returned {len(outputs)} answers for a batch of {len(pairs)} prompts")
            store.append(make_record(name, s, "" if o is None else str(o)) for (s, _), o in zip(pairs, outputs))
        progress.advance(len(batch))
    return bad


def _score(datas: list[BenchmarkData], store: PredictionStore, runtime_bad: list[list[BadRow]]):
    """Results, skipped-row report and the canonically ordered records of every benchmark of the call."""
    results: dict[str, dict] = {}
    skipped_report: dict[str, list[dict]] = {}
    ordered_records: list[dict] = []
    for data, bad_now in zip(datas, runtime_bad):
        bad_keys = {(b.language, b.index) for b in bad_now}
        records = []
        for s in data.samples:
            if (s.language, s.index) in bad_keys:
                continue
            stored = store.get((data.name, s.language, s.index))
            if stored is None:  # a data parallel rank wrote into a folder rank 0 does not see
                raise RuntimeError(
                    f"no prediction for {data.name} {s.language} row {s.index} after every rank finished: all ranks "
                    f"must write into the same output folder ({store.path.parent} on rank 0)"
                )
            # Re-derive choice/hit from the raw text so the scoring always follows the current rules.
            records.append(make_record(data.name, s, stored["prediction"]))
        ordered_records += records
        all_bad = list(data.bad_rows) + list(bad_now)
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
    return results, skipped_report, ordered_records


def evaluate(
    model=None,
    processor=None,
    *,
    predictor: Predictor | None = None,
    predict_fn: Callable[[list[tuple]], Sequence[str]] | None = None,
    backend: str = "hf",
    benchmark: str | Sequence[str] = "mmmb",
    languages: str | Iterable[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "parrot_eval_output",
    batch_size: int = DEFAULT_BATCH_SIZE,
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
    :class:`TransformersPredictor`), ``model`` as a folder or Hub id (loaded for ``backend`` ``"hf"`` or
    ``"vllm"``), a :class:`Predictor` (e.g. :class:`VLLMPredictor`), or a ``predict_fn(list of (image, prompt,
    language)) -> list[str]``. ``benchmark`` may be a name, a TSV path, a :class:`BenchmarkData` from
    :func:`prepare_benchmark`, or a list of them. ``batch_size`` is the ``generate`` batch of predictors without
    their own scheduler; a predictor with ``predict_stream`` (vLLM) gets every row as one stream.

    Predictions are appended (fsynced) to ``{output_dir}/predictions.jsonl`` as they are made; rerunning the
    same call skips rows already predicted. Launched as N processes (``torchrun``, ``accelerate launch``), each
    process predicts every N-th pending row into ``predictions.rank{r}.jsonl``; rank 0 merges them into
    ``predictions.jsonl`` and scores once every rank finished, and every rank returns the results.
    Returns ``{benchmark: {language: {"overall", "category", "l2-category", "n", "skipped", ...}}}`` (percent) for the
    benchmarks of this call; ``results.json`` in the folder also keeps benchmarks evaluated earlier there.
    """
    given = sum(x is not None for x in (predictor, predict_fn)) + (model is not None)
    if given != 1:
        raise ValueError("pass exactly one of: model (+ processor), predictor, predict_fn")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
    if backend != "hf" and (
        predictor is not None or predict_fn is not None or not isinstance(model, (str, os.PathLike))
    ):
        raise ValueError(f"backend={backend!r} loads a model folder or Hub id: pass model='path/or/id'")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")

    benchmarks = [benchmark] if isinstance(benchmark, (str, os.PathLike, BenchmarkData)) else list(benchmark)
    # Load (and validate) all data before touching the output folder or the model.
    datas = [
        b
        if isinstance(b, BenchmarkData)
        else prepare_benchmark(str(b), languages, data_dir, limit=limit, circular=circular, download=download)
        for b in benchmarks
    ]
    if isinstance(model, (str, os.PathLike)):
        predictor = load_predictor(str(model), backend=backend, max_new_tokens=max_new_tokens)
    elif model is not None:
        if processor is None:
            raise ValueError("a processor is needed with a model")
        predictor = TransformersPredictor(model, processor, max_new_tokens=max_new_tokens, name=model_name)
    elif predict_fn is not None:
        predictor = FunctionPredictor(predict_fn, name=model_name or "custom")
    name = model_name or getattr(predictor, "name", None) or type(predictor).__name__

    return _run(
        predictor,
        datas,
        RankContext.from_environment(),
        Path(output_dir),
        str(name),
        batch_size,
        max_new_tokens,
        progress,
        overwrite,
        write_reports,
    )


def _run(
    predictor,
    datas: list[BenchmarkData],
    ranks: RankContext,
    output_dir: Path,
    name: str,
    batch_size: int,
    max_new_tokens: int,
    progress: bool,
    overwrite: bool,
    write_reports: bool,
) -> dict:
    main_path = output_dir / PREDICTIONS_FILE
    if ranks.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _check_config(output_dir, {"model": name, "max_new_tokens": int(max_new_tokens)}, overwrite)
        _merge_rank_files(PredictionStore(main_path), output_dir)  # rows of an interrupted data parallel run
    ranks.wait_for_all()
    done = PredictionStore(main_path)  # read only past this point until every rank finished
    if ranks.distributed:
        own = PredictionStore(output_dir / RANK_PREDICTIONS_PATTERN.format(rank=ranks.rank))
        others = [
            output_dir / RANK_PREDICTIONS_PATTERN.format(rank=r) for r in range(ranks.world_size) if r != ranks.rank
        ]
    else:
        own, others = done, []

    todo = [[s for s in data.samples if (data.name, s.language, s.index) not in done] for data in datas]
    total = sum(len(data.samples) for data in datas)
    already = total - sum(len(t) for t in todo)
    if already:
        logger.info("%d of %d rows already predicted in %s", already, total, output_dir)
    names = sorted({data.name for data in datas})
    bar = RunProgress(total, already, names[0] if len(names) == 1 else "evaluate", progress and ranks.is_main, others)
    try:
        runtime_bad = [
            _predict_rows(predictor, data.name, rows[ranks.rank :: ranks.world_size], batch_size, own, bar)
            for data, rows in zip(datas, todo)
        ]
        ranks.wait_for_all(poll=bar.refresh)
    finally:
        bar.close()

    every_bad = ranks.gather(runtime_bad)
    runtime_bad = [[b for rank_bad in every_bad for b in rank_bad[i]] for i in range(len(datas))]
    results = None
    if ranks.is_main:
        store = PredictionStore(main_path)
        _merge_rank_files(store, output_dir)
        results, skipped_report, ordered_records = _score(datas, store, runtime_bad)
        store.finalize(ordered_records)
        if write_reports:
            from .report import write_reports as _write_reports

            _write_reports(output_dir, results, skipped=skipped_report, model_name=name)
    return ranks.broadcast_from_main(results)
