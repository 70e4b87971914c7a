"""Conventions every command line of transformers-parrot shares: flag spelling, `--dtype` names, and argument checks
that run while the arguments are parsed, so a wrong path or model id is a one-line ``<prog>: error: argument
--name: ...`` (exit 2) before any work starts.

A leaf module: it imports nothing from the rest of the package.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""`--dtype` of every command line: "auto" (the checkpoint's own dtype) or a torch dtype name."""

MODEL_CONFIG_FILE = "config.json"
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow")


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **kwargs: Any) -> argparse.Action:
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


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def check_hub_id(value: str, kind: str = "model") -> str:
    """`value` as a Hub repo id: well formed, and, offline, present in the local cache; else ArgumentTypeError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a local {kind} folder nor a valid Hub id ({e})") from e
    if _hub_offline():
        from huggingface_hub import scan_cache_dir

        repo_type = "dataset" if kind == "dataset" else "model"
        try:
            cached = {(r.repo_id, r.repo_type) for r in scan_cache_dir().repos}
        except Exception:  # no cache folder yet
            cached = set()
        if (value, repo_type) not in cached:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a local folder, and the Hub is offline (HF_HUB_OFFLINE=1) with no cached copy of "
                f"this {kind}"
            )
    return value


def model_argument(value: str) -> str:
    """A model folder holding config.json, or a Hub model id (checked against the cache when offline)."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / MODEL_CONFIG_FILE).is_file():
            raise argparse.ArgumentTypeError(f"folder {value} holds no {MODEL_CONFIG_FILE}: not a saved model")
        return str(path)
    if path.exists():
        raise argparse.ArgumentTypeError(f"{value} is a file; expected a model folder or a Hub id")
    if value.startswith((".", "/", "~")) or value.count("/") > 1:
        raise argparse.ArgumentTypeError(f"no such model folder: {value}")
    return check_hub_id(value, "model")


def existing_file(value: str) -> str:
    """A path to a readable file."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder; expected a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"file {value} is not readable")
    return str(path)


def existing_dir(value: str) -> str:
    """A path to an existing folder."""
    path = Path(value).expanduser()
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is a file; expected a folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {value}")
    return str(path)


def output_dir(value: str) -> str:
    """A folder to write into: an existing folder, or a new one whose nearest existing parent is a writable folder."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file; expected an output folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {value}: {parent} is a file")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {value}: {parent} is not writable")
    return str(path)


def dataset_argument(value: str) -> str:
    """A local data file (JSON, JSONL, Parquet, CSV, TSV, Arrow), a local folder, or a Hub dataset id
    (``name`` or ``name:config``)."""
    path = Path(value).expanduser()
    if path.is_file():
        if path.suffix.lower() not in DATA_FILE_SUFFIXES:
            raise argparse.ArgumentTypeError(
                f"{value}: unsupported data file type {path.suffix or '(none)'}; use one of {list(DATA_FILE_SUFFIXES)}"
            )
        return str(path)
    if path.is_dir():
        return str(path)
    if path.suffix.lower() in DATA_FILE_SUFFIXES or value.startswith((".", "/", "~")) or value.count("/") > 1:
        raise argparse.ArgumentTypeError(f"no such data file or folder: {value}")
    check_hub_id(value.partition(":")[0], "dataset")
    return value


__all__ = [
    "DTYPE_CHOICES",
    "add_flag",
    "torch_dtype",
    "check_hub_id",
    "model_argument",
    "existing_file",
    "existing_dir",
    "output_dir",
    "dataset_argument",
]
