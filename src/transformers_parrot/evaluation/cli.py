"""``parrot-eval``: evaluate a model on MMMB / multilingual MMBench / a VLMEvalKit multiple-choice TSV.

The same command runs as one process (``--backend hf`` on one device or, with ``--device_map auto``, across the
visible GPUs; ``--backend vllm`` with ``--tensor_parallel_size N``) or data parallel under ``torchrun
--nproc_per_node N`` / ``accelerate launch --num_processes N`` (one device per process).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..benchmark_specs import BENCHMARKS, is_builtin_benchmark
from ..cli_utils import (
    DTYPE_CHOICES,
    InputError,
    add_flag,
    check_file,
    check_folder,
    check_model,
    check_output_folder,
    first_input_error,
    torch_dtype,
)
from ..languages import LANGUAGES, UnknownLanguageError
from ..quantization import QuantizationSetupError, add_quantization_flags, quantization_config_from_args
from . import runner
from .data import DatasetFormatError
from .distributed import launched_world_size
from .report import MODEL_INDEX_JSON, PLOT_PNG, RESULTS_CSV, RESULTS_JSON, RESULTS_MD, SKIPPED_JSON
from .vllm_predictor import VLLMNotAvailableError

EXTRA_MODULES = ("pandas", "matplotlib")  # what parrot-eval needs beyond the base install
INSTALL_HINT = 'pip install "transformers-parrot[eval]"'
VLLM_FLAGS = ("tensor_parallel_size", "max_model_len", "gpu_memory_utilization")
QUANTIZATION_FLAGS = ("load_in_4bit", "load_in_8bit", "use_bnb_nested_quant", "quantization_config")
WRITTEN_FILES = (
    runner.PREDICTIONS_FILE,
    RESULTS_JSON,
    RESULTS_CSV,
    RESULTS_MD,
    PLOT_PNG,
    MODEL_INDEX_JSON,
    SKIPPED_JSON,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parrot-eval",
        description="Evaluate an image-text-to-text model on MMMB and multilingual MMBench (Parrot, arXiv 2406.02539). "
        "Flags are spelled with underscores (--data_dir); the dashed spelling (--data-dir) is accepted too. "
        "Under torchrun/accelerate launch with N processes the rows are shared among them.",
    )
    add_flag(p, "model", required=True, help="model folder or Hub id (loaded with the Auto classes)")
    add_flag(
        p,
        "benchmark",
        required=True,
        help="mmmb, mmbench, or a path to a VLMEvalKit-format multiple-choice TSV (comma-separate several)",
    )
    add_flag(
        p, "languages", default=None, help=f"comma-separated codes (default: all of {','.join(LANGUAGES)}; 'cn' = zh)"
    )
    add_flag(
        p,
        "data_dir",
        default=None,
        help="folder holding the benchmark TSVs (downloaded there when missing; with --no_download it must exist)",
    )
    add_flag(p, "output", required=True, help="output folder (predictions.jsonl, results.json, tables, plot)")
    add_flag(
        p,
        "backend",
        default="hf",
        choices=runner.BACKENDS,
        help="hf: transformers generate; vllm: vLLM's engine through this package's plugin (default: hf)",
    )
    add_flag(
        p,
        "batch_size",
        type=int,
        default=None,
        help=f"generate batch of the hf backend (default: {runner.DEFAULT_BATCH_SIZE}); vLLM schedules itself",
    )
    add_flag(p, "max_new_tokens", type=int, default=512)
    add_flag(p, "limit", type=int, default=None, help="evaluate at most N rows per language")
    add_flag(p, "trust_remote_code", action="store_true")
    add_flag(p, "dtype", default="auto", choices=DTYPE_CHOICES)
    add_flag(
        p,
        "device",
        default="auto",
        help="hf backend: cpu, cuda, cuda:N or auto; with N processes auto/cuda mean cuda:LOCAL_RANK",
    )
    add_flag(
        p,
        "device_map",
        default=None,
        choices=("auto",),
        help="hf backend: place one model across all visible GPUs (accelerate)",
    )
    add_flag(p, "model_name", default=None, help="name used in the reports (default: --model)")
    add_flag(
        p,
        "circular",
        dest="circular",
        action="store_true",
        default=None,
        help="force circular evaluation (default: on for MMBench)",
    )
    add_flag(p, "no_circular", dest="circular", action="store_false")
    add_flag(p, "no_download", action="store_true", help="never download benchmark files from the Hub")
    add_flag(p, "overwrite", action="store_true", help="discard predictions already in the output folder")
    add_flag(p, "no_progress", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    vllm = p.add_argument_group("vLLM backend (--backend vllm)")
    add_flag(vllm, "tensor_parallel_size", type=int, default=None, help="GPUs one model is split across")
    add_flag(vllm, "max_model_len", type=int, default=None, help="context length of the engine (prompt + answer)")
    add_flag(
        vllm,
        "gpu_memory_utilization",
        type=float,
        default=None,
        help="fraction of each GPU's memory the engine may take (vLLM's default: 0.9)",
    )
    add_quantization_flags(p)
    return p


def missing_extra() -> str | None:
    """An error message when a module of the ``eval`` extra is not installed, else None."""
    for module in EXTRA_MODULES:
        try:
            __import__(module)
        except ImportError as e:
            return f"{module} is not installed ({e}); parrot-eval needs the eval extra: {INSTALL_HINT}"
    return None


def _flag(name: str) -> str:
    return f"--{name}"


def check_backend_flags(args: argparse.Namespace) -> str | None:
    """An error message when a flag is given that the chosen backend does not use, else None."""
    if args.backend == "hf":
        given = [_flag(n) for n in VLLM_FLAGS if getattr(args, n) is not None]
        if given:
            return f"{', '.join(given)} configure the vLLM engine: add --backend vllm"
        return None
    given = [_flag(n) for n in ("batch_size", "device_map") if getattr(args, n) is not None]
    given += [_flag(n) for n in QUANTIZATION_FLAGS if getattr(args, n) not in (None, False)]
    if given:
        return (
            f"{', '.join(given)} apply to --backend hf only (vLLM batches requests itself and loads the weights the "
            "checkpoint holds)"
        )
    for name in ("tensor_parallel_size", "max_model_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return f"--{name} must be >= 1"
    if args.gpu_memory_utilization is not None and not 0 < args.gpu_memory_utilization <= 1:
        return "--gpu_memory_utilization must be in (0, 1]"
    return None


def split_benchmarks(text: str) -> list[str]:
    """`--benchmark`'s comma-separated items."""
    return [b.strip() for b in text.split(",") if b.strip()] if "," in text else [text]


def check_inputs(args: argparse.Namespace) -> str | None:
    """The first model, benchmark, folder or file argument that cannot work, as ``--flag VALUE: problem``; None
    when all can. Only the local file system is looked at (a Hub id is checked for its syntax)."""
    data_dir = args.data_dir

    def benchmark(value: str) -> str:
        if is_builtin_benchmark(value):
            return value
        if data_dir is not None and not os.path.exists(value) and (Path(data_dir) / value).is_file():
            value = str(Path(data_dir) / value)
        try:
            return check_file(value)
        except InputError as e:
            raise InputError(f"neither one of {', '.join(BENCHMARKS)} nor a readable TSV file ({e})") from None

    checks = {
        "model": check_model,
        "output": check_output_folder,
        # --no_download: the benchmark files must be there already; else they are downloaded into it
        "data_dir": check_folder if args.no_download else check_output_folder,
        "quantization_config": check_file,
    }
    return first_input_error(vars(args), checks) or first_input_error(
        {"benchmark": split_benchmarks(args.benchmark)}, {"benchmark": benchmark}
    )


def backend_kwargs(args: argparse.Namespace) -> dict:
    """The backend-specific arguments of `runner.load_predictor`."""
    if args.backend == "vllm":
        return {n: getattr(args, n) for n in VLLM_FLAGS if getattr(args, n) is not None}
    kwargs = {}
    if args.device_map is not None:
        kwargs["device_map"] = args.device_map
    quantization = quantization_config_from_args(args, compute_dtype=torch_dtype(args.dtype))
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    world_size = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    prefix = f"[rank {rank}] " if world_size > 1 else ""

    def error(message: str) -> int:
        print(f"parrot-eval: error: {prefix}{message}", file=sys.stderr)
        return 2

    if args.batch_size is not None and args.batch_size < 1:
        return error("--batch_size must be >= 1")
    problem = check_backend_flags(args) or check_inputs(args) or missing_extra()
    if problem:
        return error(problem)
    benchmarks = split_benchmarks(args.benchmark)
    try:
        # Validate the data first: a wrong path or column layout fails before a model is loaded.
        datas = [
            runner.prepare_benchmark(
                b,
                args.languages,
                args.data_dir,
                limit=args.limit,
                circular=args.circular,
                download=not args.no_download,
            )
            for b in benchmarks
        ]
        predictor = runner.load_predictor(
            args.model,
            backend=args.backend,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            max_new_tokens=args.max_new_tokens,
            **backend_kwargs(args),
        )
        results = runner.evaluate(
            predictor=predictor,
            benchmark=datas,
            languages=args.languages,
            data_dir=args.data_dir,
            output_dir=args.output,
            batch_size=args.batch_size or runner.DEFAULT_BATCH_SIZE,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            model_name=args.model_name or args.model,
            circular=args.circular,
            download=not args.no_download,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (
        DatasetFormatError,
        UnknownLanguageError,
        runner.EvaluationConfigError,
        QuantizationSetupError,
        VLLMNotAvailableError,
    ) as e:
        return error(str(e))
    except Exception as e:
        if world_size <= 1:
            raise
        # A failing rank names itself; the launcher then stops the other ranks and fails the command.
        traceback.print_exc()
        print(f"parrot-eval: error: {prefix}{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if rank != 0:
        return 0
    for bench, per_lang in results.items():
        for lang, r in per_lang.items():
            count = r.get("questions", r.get("n"))
            print(f"{bench} {lang}: accuracy {r['overall']:.2f} % ({count} questions, {r.get('skipped', 0)} skipped)")
    print("written: " + ", ".join(str(Path(args.output) / name) for name in WRITTEN_FILES))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
