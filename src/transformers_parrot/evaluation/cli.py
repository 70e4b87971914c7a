"""``parrot-eval``: evaluate a model on MMMB / multilingual MMBench / a VLMEvalKit multiple-choice TSV."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..cli import DTYPE_CHOICES, add_flag
from .data import LANGUAGES, DatasetFormatError, UnknownLanguageError
from .report import RESULTS_MD
from . import runner


EXTRA_MODULES = ("pandas", "matplotlib")  # what parrot-eval needs beyond the base install
INSTALL_HINT = 'pip install "transformers-parrot[eval]"'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parrot-eval",
        description="Evaluate an image-text-to-text model on MMMB and multilingual MMBench (Parrot, arXiv 2406.02539). "
        "Flags are spelled with underscores (--data_dir); the dashed spelling (--data-dir) is accepted too.",
    )
    add_flag(p, "model", required=True, help="model folder or Hub id (loaded with the Auto classes)")
    add_flag(
        p,
        "benchmark",
        required=True,
        help="mmmb, mmbench, or a path to a VLMEvalKit-format multiple-choice TSV (comma-separate several)",
    )
    add_flag(p, "languages", default=None, help=f"comma-separated codes (default: all of {','.join(LANGUAGES)}; 'cn' = zh)")
    add_flag(p, "data_dir", default=None, help="folder holding the benchmark TSVs (downloaded there when missing)")
    add_flag(p, "output", required=True, help="output folder (predictions.jsonl, results.json, tables, plot)")
    add_flag(p, "batch_size", type=int, default=8)
    add_flag(p, "max_new_tokens", type=int, default=512)
    add_flag(p, "limit", type=int, default=None, help="evaluate at most N rows per language")
    add_flag(p, "trust_remote_code", action="store_true")
    add_flag(p, "dtype", default="auto", choices=DTYPE_CHOICES)
    add_flag(p, "device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_flag(p, "model_name", default=None, help="name used in the reports (default: --model)")
    add_flag(p, "circular", dest="circular", action="store_true", default=None,
          help="force circular evaluation (default: on for MMBench)")
    add_flag(p, "no_circular", dest="circular", action="store_false")
    add_flag(p, "no_download", action="store_true", help="never download benchmark files from the Hub")
    add_flag(p, "overwrite", action="store_true", help="discard predictions already in the output folder")
    add_flag(p, "no_progress", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def missing_extra() -> str | None:
    """An error message when a module of the ``eval`` extra is not installed, else None."""
    for module in EXTRA_MODULES:
        try:
            __import__(module)
        except ImportError as e:
            return f"{module} is not installed ({e}); parrot-eval needs the eval extra: {INSTALL_HINT}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.batch_size < 1:
        print("parrot-eval: error: --batch_size must be >= 1", file=sys.stderr)
        return 2
    missing = missing_extra()
    if missing:
        print(f"parrot-eval: error: {missing}", file=sys.stderr)
        return 2
    benchmarks = [b for b in args.benchmark.split(",") if b.strip()] if "," in args.benchmark else [args.benchmark]
    try:
        # Validate the data first: a wrong path or column layout fails before a model is loaded.
        datas = [
            runner.prepare_benchmark(b, args.languages, args.data_dir, limit=args.limit, circular=args.circular,
                                     download=not args.no_download)
            for b in benchmarks
        ]
        predictor = runner.load_predictor(
            args.model,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            max_new_tokens=args.max_new_tokens,
        )
        results = runner.evaluate(
            predictor=predictor,
            benchmark=datas,
            languages=args.languages,
            data_dir=args.data_dir,
            output_dir=args.output,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            model_name=args.model_name or args.model,
            circular=args.circular,
            download=not args.no_download,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (DatasetFormatError, UnknownLanguageError, runner.EvaluationConfigError) as e:
        print(f"parrot-eval: error: {e}", file=sys.stderr)
        return 2
    for bench, per_lang in results.items():
        cells = ", ".join(f"{l} {r['overall']:.2f}" for l, r in per_lang.items())
        print(f"{bench}: {cells}")
    print(f"results written to {args.output} (see {RESULTS_MD})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
