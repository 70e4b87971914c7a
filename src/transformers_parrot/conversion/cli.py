"""``parrot-convert`` (and ``conversion/convert_parrot_weights_to_hf.py``): convert, verify, publish.

Flags are spelled with underscores as in transformers and TRL (``--max_shard_size``); the dashed spelling
(``--max-shard-size``) is accepted for every flag. Exit codes: see `errors`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..cli_utils import InputError, add_flag, check_file, check_model, check_output_folder, first_input_error
from .converter import convert
from .errors import EXIT_HUB_ERROR, EXIT_INPUT_ERROR, EXIT_OK, EXIT_VERIFICATION_FAILED, ConversionError, PublishError
from .hub import check_push_target, push_folder
from .settings import OUTPUT_DTYPES
from .verification import verify


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parrot-convert",
        description="Convert an original Parrot checkpoint (AIDC-AI/Parrot-7B style) to transformers-native Parrot.",
        epilog="exit codes: 0 success; 1 verification mismatch; 2 bad input or argument (nothing written); "
        "3 the Hub failed while publishing",
    )
    add_flag(parser, "input", required=True, help="original checkpoint: local folder or Hub repo id")
    add_flag(parser, "output", required=True, help="output folder")
    add_flag(
        parser,
        "vision_tower",
        default=None,
        help="CLIP vision tower (folder or Hub id) overriding mm_vision_tower; its weights, when it has "
        "any, replace those inside the checkpoint",
    )
    add_flag(
        parser,
        "dtype",
        default="auto",
        choices=["auto", *OUTPUT_DTYPES],
        help="dtype of the converted weights (auto: the input's torch_dtype)",
    )
    add_flag(parser, "max_shard_size", default="5GB", help="largest output safetensors shard (default 5GB)")
    add_flag(parser, "overwrite", action="store_true", help="replace a non-empty output folder")
    add_flag(
        parser,
        "verify",
        action="store_true",
        help="compare the converted model with an independent forward over the input tensors",
    )
    add_flag(parser, "verify_only", action="store_true", help="only run the verification of an existing output")
    add_flag(
        parser,
        "verify_dtype",
        default="auto",
        choices=["auto", *OUTPUT_DTYPES],
        help="compute dtype of the verification (auto: float32 when it fits in RAM)",
    )
    add_flag(
        parser,
        "tolerance",
        type=float,
        default=None,
        help="relative tolerance of --verify (default 1e-4 in float32, 3e-2 otherwise)",
    )
    add_flag(parser, "model_name", default=None, help="model name in the card (default: the input's name)")
    add_flag(parser, "license", default=None, help="license for the card (default: the input card's)")
    add_flag(
        parser,
        "results",
        default=None,
        help="evaluation results.json or model_index.json (parrot-eval) for the card's model-index",
    )
    add_flag(
        parser,
        "push_to_hub",
        default=None,
        metavar="REPO",
        help="upload the output folder to this Hub repo (repo id and token are checked before converting)",
    )
    add_flag(parser, "private", action="store_true", help="create the --push_to_hub repo as private")
    return parser


def _checkpoint(value: str) -> str:
    """A local folder must hold config.json; a name that is no folder is left to `resolve_checkpoint` (a mistyped
    folder, a Hub repo id, an offline Hub: each gets its own message there)."""
    return check_model(value) if Path(value).expanduser().is_dir() else value


def _converted(value: str) -> str:
    """--verify_only's --output: a folder holding a converted model."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError("is a file; expected the folder of a converted model")
    if not (path / "config.json").is_file():
        raise InputError("holds no converted model (no config.json): convert first")
    return value


def check_inputs(args: argparse.Namespace) -> str | None:
    """The first path argument that cannot work (``--flag VALUE: problem``), else None, before anything is read or
    written. A name that is not a local folder (`--input`, `--vision_tower`) is resolved by `convert` / `verify`,
    which say whether it is a missing folder (with the closest name) or a Hub repo that cannot be fetched."""
    checks = {
        "input": _checkpoint,
        "output": _converted if args.verify_only else check_output_folder,
        "vision_tower": _checkpoint,
        "results": check_file,
    }
    return first_input_error(vars(args), checks)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problem = check_inputs(args)
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        target = check_push_target(args.push_to_hub) if args.push_to_hub else None
        if not args.verify_only:
            result = convert(
                args.input,
                args.output,
                vision_tower=args.vision_tower,
                dtype=args.dtype,
                max_shard_size=args.max_shard_size,
                overwrite=args.overwrite,
                model_name=args.model_name,
                license=args.license,
                results=args.results,
            )
            print(
                f"converted {args.input} -> {result.output} ({len(result.shards)} shard(s), <image> id "
                f"{result.image_token_id}, {'resized' if result.resized_vocab else 'spare'} embedding row, "
                f"vision from {result.vision_source})"
            )
            for name in result.ignored:
                print(f"  not converted: {name}")
        if args.verify or args.verify_only:
            report = verify(
                args.input,
                args.output,
                vision_tower=args.vision_tower,
                compute_dtype=args.verify_dtype,
                tolerance=args.tolerance,
            )
            if not report.ok:
                print("VERIFICATION FAILED:", file=sys.stderr)
                for failure in report.failures:
                    print(f"  {failure}", file=sys.stderr)
                return EXIT_VERIFICATION_FAILED
            print("verification passed: routing weights, image features and last-token logits match")
        if target is not None:
            url = push_folder(
                target,
                Path(args.output),
                private=args.private,
                commit_message=f"Convert {args.input} to transformers-native Parrot",
            )
            print(f"pushed {args.output} to {url}")
    except ConversionError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except PublishError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_HUB_ERROR if err.network else EXIT_INPUT_ERROR
    return EXIT_OK
