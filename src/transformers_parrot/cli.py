"""Console-script entry points of transformers-parrot, and the conventions their parsers share."""

from __future__ import annotations

import argparse
import sys

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""`--dtype` of every command line: "auto" (the checkpoint's own dtype) or a torch dtype name."""


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> argparse.Action:
    """Add ``--name_with_underscores`` (transformers/TRL style), also accepted as ``--name-with-underscores``."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    kwargs.setdefault("dest", name)
    return parser.add_argument(*flags, **kwargs)


def torch_dtype(name: str):
    """`torch.<name>` for a `DTYPE_CHOICES` name; "auto" stays "auto" (what `from_pretrained(dtype=...)` takes)."""
    if name == "auto":
        return "auto"
    if name not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {name!r}; use one of {list(DTYPE_CHOICES)}")
    import torch

    return getattr(torch, name)


def eval_main() -> None:
    """``parrot-eval``: see ``transformers_parrot.evaluation.cli``."""
    from .evaluation.cli import main

    sys.exit(main())


def convert_main() -> None:
    """``parrot-convert``: see ``transformers_parrot.conversion``."""
    from .conversion import main

    sys.exit(main())


def demo_main() -> None:
    """``parrot-demo``: see ``transformers_parrot.demo.run``."""
    from .demo.run import main

    sys.exit(main())


def chat_main() -> None:
    """``parrot-chat``: see ``transformers_parrot.chat.cli``."""
    from .chat.cli import main

    sys.exit(main())
