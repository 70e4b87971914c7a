"""`parrot-chat`: serve the web chat for a Parrot checkpoint (`--model`) or a vLLM server (`--server`).

parrot-chat --model parrot-demo-output/model          # any folder this package saves, or a Hub id
parrot-chat --model Parrot-7B-hf --dtype bfloat16 --device cuda
parrot-chat --server http://localhost:8000            # a running vLLM OpenAI-compatible server
"""

from __future__ import annotations

import argparse
import os
import sys

from ..cli_utils import DTYPE_CHOICES, InputError, add_flag, check_file, check_model, first_input_error, torch_dtype
from ..quantization import QuantizationSetupError, add_quantization_flags, quantization_config_from_args

DEMO_MODEL = os.path.join("parrot-demo-output", "model")  # where `parrot-demo` saves its model


def build_parser() -> argparse.ArgumentParser:
    from .backend import DEFAULT_CONCURRENCY, DEFAULT_MAX_IMAGES

    parser = argparse.ArgumentParser(
        prog="parrot-chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"folder or Hub id of a Parrot checkpoint (default: {DEMO_MODEL} if present)")
    source.add_argument("--server", metavar="URL", help="answer through a vLLM OpenAI-compatible server at URL")
    add_flag(parser, "server_model", help="model id on the server (default: the first of /v1/models)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    add_quantization_flags(parser)
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, mps, ...")
    add_flag(parser, "trust_remote_code", action="store_true", help="load a checkpoint's own code")
    add_flag(
        parser,
        "max_images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help="images per conversation (default: %(default)s, as Parrot was trained)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests answered at once (default: %(default)s)"
    )
    return parser


def resolve_model(model: str | None) -> tuple[str | None, str | None]:
    """(model to load, notice for the user); (None, explanation) when there is nothing to load."""
    if model:
        return model, None
    if os.path.isfile(os.path.join(DEMO_MODEL, "config.json")):
        return DEMO_MODEL, (
            f"No --model given: using `{DEMO_MODEL}`, the small model `parrot-demo` trained on "
            "drawn shapes (it knows colours, shapes, counts and positions, nothing else)."
        )
    return None, (
        f"parrot-chat needs a model: --model PATH_OR_ID (a folder saved by this package, a checkpoint "
        f"converted with parrot-convert, or a fine-tuned one), or --server URL for a vLLM server. "
        f"`parrot-demo` trains a small one into {DEMO_MODEL} in about 8 CPU minutes, which parrot-chat "
        "then uses by default."
    )


def check_server_url(value: str) -> str:
    """An http(s) URL with a host (the vLLM server's address)."""
    from urllib.parse import urlparse

    url = urlparse(value)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise InputError("not an http:// or https:// URL with a host (e.g. http://localhost:8000)")
    return value


def check_inputs(args: argparse.Namespace) -> str | None:
    """The first model, server or file argument that cannot work (``--flag VALUE: problem``), else None."""
    checks = {"model": check_model, "server": check_server_url, "quantization_config": check_file}
    return first_input_error(vars(args), checks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_images < 1 or args.concurrency < 1:
        print("parrot-chat: error: --max_images and --concurrency must be at least 1", file=sys.stderr)
        return 2
    problem = check_inputs(args)
    if problem:
        print(f"parrot-chat: error: {problem}", file=sys.stderr)
        return 2
    try:
        quantization = quantization_config_from_args(args, torch_dtype(args.dtype))
    except QuantizationSetupError as err:
        print(f"parrot-chat: error: {err}", file=sys.stderr)
        return 2
    if quantization is not None and args.server:
        print(
            "parrot-chat: error: quantization flags load a local model; the --server model is loaded by its server",
            file=sys.stderr,
        )
        return 2
    model, notice = (None, None) if args.server else resolve_model(args.model)
    if model is None and not args.server:
        print(notice, file=sys.stderr)
        return 2
    try:
        from .app import ChatApp
    except ImportError as err:
        print(f"parrot-chat needs Gradio ({err}): pip install 'transformers-parrot[chat]'", file=sys.stderr)
        return 2
    from .backend import LocalBackend, ServerBackend

    if args.server:
        backend = ServerBackend(args.server, model=args.server_model, max_images=args.max_images)
    else:
        if notice:
            print(notice)
        print(f"parrot-chat: loading {model} ...", flush=True)
        backend = LocalBackend.from_pretrained(
            model,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            max_images=args.max_images,
            quantization_config=quantization,
        )
    ChatApp(backend, notice=notice).launch(host=args.host, port=args.port, concurrency=args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
