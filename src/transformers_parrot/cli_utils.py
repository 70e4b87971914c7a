"""Conventions every command line of transformers-parrot shares: flag spelling, `--dtype` names, and the checks of
every argument that names a model, a file, a folder or a dataset.

The checks run right after parsing, before any model is loaded or any heavy module imported: a wrong value is one
line ``<prog>: error: --flag VALUE: what is wrong`` on stderr and exit code 2. They look only at the local file
system: a well-formed Hub id is accepted as it is (never resolved here, so an offline machine does not wait on the
network); loading it later fails with the Hub client's own message when it does not exist.

A leaf module: it imports nothing from the rest of the package.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
"""`--dtype` of every command line: "auto" (the checkpoint's own dtype) or a torch dtype name."""

MODEL_CONFIG_FILE = "config.json"
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")
"""Local data files the training readers take (LLaVA JSON/JSONL, and what `datasets` reads by extension)."""


class InputError(ValueError):
    """A command-line value that cannot work. ``str()`` is the problem without the flag (``no such file``);
    `check_inputs` puts ``--flag VALUE:`` in front."""


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


# ---------------------------------------------------------------------------------------------- single values
def looks_local(value: str) -> bool:
    """Whether `value` can only be a local path, never a Hub id (``name`` or ``owner/name``)."""
    return value.startswith(("/", ".", "~")) or "\\" in value


def _missing(value: str, what: str) -> str:
    """``no such <what>``, with the closest sibling name when there is one (a typo)."""
    path = Path(value).expanduser()
    message = f"no such {what}"
    parent = path.parent
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=1)
    if close:
        message += f" (did you mean {parent / close[0] if str(parent) != '.' else close[0]}?)"
    return message


def _readable_dir(path: Path) -> None:
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError("folder is not readable")


def _readable_file(path: Path) -> None:
    if not os.access(path, os.R_OK):
        raise InputError("file is not readable")


def hub_id_problem(value: str) -> str | None:
    """Why `value` is not a well-formed Hub repo id (`huggingface_hub.utils.validate_repo_id`), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as e:
        return str(e).split(f": {value!r}")[0].rstrip(".")
    return None


def check_hub_id(value: str, kind: str = "model") -> str:
    """`value` as the Hub id of a `kind` ("model", "dataset") that is not a local folder: its syntax only, never
    resolved. `kind=None`: a repo id to publish to."""
    reason = hub_id_problem(value)
    if reason:
        raise InputError(
            f"neither a local {kind} folder nor a valid Hub id ({reason})"
            if kind
            else f"not a valid Hub id ({reason})"
        )
    return value


def check_model(value: str) -> str:
    """A model folder holding a readable config.json, or a well-formed Hub model id."""
    path = Path(value).expanduser()
    if path.is_dir():
        _readable_dir(path)
        config = path / MODEL_CONFIG_FILE
        if not config.is_file():
            raise InputError(f"folder holds no {MODEL_CONFIG_FILE}: not a saved model")
        if not os.access(config, os.R_OK):
            raise InputError(f"{MODEL_CONFIG_FILE} is not readable")
        return str(path)
    if path.exists():
        raise InputError("is a file; expected a model folder or a Hub id")
    if looks_local(value):
        raise InputError(_missing(value, "local folder"))
    return check_hub_id(value, "model")


def check_file(value: str, suffixes: Iterable[str] | None = None) -> str:
    """A readable file (with one of `suffixes`, when given)."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise InputError("is a folder; expected a file")
    if not path.is_file():
        raise InputError(_missing(value, "file"))
    _readable_file(path)
    if suffixes is not None and path.suffix.lower() not in tuple(suffixes):
        raise InputError(f"unsupported file type {path.suffix or '(none)'}; use one of {', '.join(suffixes)}")
    return str(path)


def check_folder(value: str) -> str:
    """A readable existing folder."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError("is a file; expected a folder")
    if not path.is_dir():
        raise InputError(_missing(value, "folder"))
    _readable_dir(path)
    return str(path)


def check_output_folder(value: str) -> str:
    """A folder to write into: an existing writable folder, or a new one whose nearest existing parent is a writable
    folder (nothing is created here)."""
    if not str(value).strip():
        raise InputError("empty path")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError("is a file; expected an output folder")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create it: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write: {parent} is not writable" if parent != path else "folder is not writable")
    return str(path)


def _holds_data_file(folder: Path, suffixes: tuple[str, ...]) -> bool:
    for _, _, files in os.walk(folder):
        if any(Path(name).suffix.lower() in suffixes for name in files):
            return True
    return False


def check_dataset(value: str, suffixes: Iterable[str] = DATA_FILE_SUFFIXES) -> str:
    """A local data file with one of `suffixes`, a local folder holding such files, or a well-formed Hub dataset id
    (``name``, ``owner/name``, either with ``:config``)."""
    suffixes = tuple(suffixes)
    path = Path(value).expanduser()
    if path.is_file():
        return check_file(value, suffixes)
    if path.is_dir():
        _readable_dir(path)
        if not _holds_data_file(path, suffixes):
            raise InputError(f"folder holds no data file ({', '.join(suffixes)})")
        return str(path)
    if looks_local(value) or path.suffix.lower() in suffixes:
        raise InputError(_missing(value, "data file or folder"))
    check_hub_id(value.partition(":")[0], "dataset")
    return value


# ---------------------------------------------------------------------------------------------- a whole command line
Check = Callable[[str], str]


def first_input_error(values: Mapping[str, Any], checks: Mapping[str, Check]) -> str | None:
    """The first of ``values[name]`` (a string, or a list of strings; None is skipped) that its ``checks[name]``
    refuses, as ``--name VALUE: problem``; None when every one passes. `name` may be any label (an environment
    variable, say): it is shown as ``--name`` unless it holds no lowercase letter."""
    for name, check in checks.items():
        value = values.get(name)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        label = name if name.isupper() else f"--{name}"
        for item in items:
            try:
                check(str(item))
            except InputError as e:
                return f"{label} {item}: {e}"
    return None


def namespace_values(args: argparse.Namespace | Any) -> dict[str, Any]:
    """The attributes of a parsed namespace or dataclass, by name (what `first_input_error` takes)."""
    return (
        dict(vars(args))
        if not hasattr(args, "__dataclass_fields__")
        else {name: getattr(args, name) for name in args.__dataclass_fields__}
    )


__all__ = [
    "DTYPE_CHOICES",
    "DATA_FILE_SUFFIXES",
    "InputError",
    "add_flag",
    "torch_dtype",
    "looks_local",
    "hub_id_problem",
    "check_hub_id",
    "check_model",
    "check_file",
    "check_folder",
    "check_output_folder",
    "check_dataset",
    "first_input_error",
    "namespace_values",
]
