"""Quantized loading from the command line: bitsandbytes 4-bit / 8-bit (or a quantization config file) for every
command that loads a model (`parrot-eval`, `parrot-chat`, `examples/quickstart.py`).

Which modules stay unquantized is the model's own declaration (`ParrotPreTrainedModel`), not a skip list built
here: a plain `BitsAndBytesConfig` passed to `from_pretrained` gives the same model as these flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from typing import Any

from .cli_utils import add_flag

QUANT_EXTRA_HINT = 'pip install "transformers-parrot[quant]"'
"""How to get bitsandbytes: the `quant` extra."""

BNB_4BIT_QUANT_TYPES = ("nf4", "fp4")


class QuantizationSetupError(ValueError):
    """A quantization flag that cannot be honoured (missing package, conflicting flags, unreadable config file)."""


def require_bitsandbytes() -> None:
    """Raise `QuantizationSetupError` naming the `quant` extra when bitsandbytes is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationSetupError(f"bitsandbytes is not installed; quantized loading needs it: {QUANT_EXTRA_HINT}")


def bitsandbytes_config(
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    bnb_4bit_quant_type: str = "nf4",
    use_bnb_nested_quant: bool = False,
    compute_dtype: Any = None,
):
    """A `transformers.BitsAndBytesConfig` for 4-bit (nf4/fp4, optional double quantization) or 8-bit loading,
    or None when neither is asked for. `compute_dtype` is the 4-bit matmul dtype (a torch dtype; None or "auto":
    bfloat16)."""
    if load_in_4bit and load_in_8bit:
        raise QuantizationSetupError("--load_in_4bit and --load_in_8bit exclude each other: give one of them")
    if not (load_in_4bit or load_in_8bit):
        if use_bnb_nested_quant or bnb_4bit_quant_type != "nf4":
            raise QuantizationSetupError(
                "--bnb_4bit_quant_type / --use_bnb_nested_quant configure 4-bit loading: add --load_in_4bit"
            )
        return None
    if bnb_4bit_quant_type not in BNB_4BIT_QUANT_TYPES:
        raise QuantizationSetupError(
            f"--bnb_4bit_quant_type must be one of {list(BNB_4BIT_QUANT_TYPES)}, got {bnb_4bit_quant_type!r}"
        )
    if load_in_8bit and (use_bnb_nested_quant or bnb_4bit_quant_type != "nf4"):
        raise QuantizationSetupError("--bnb_4bit_quant_type / --use_bnb_nested_quant apply to --load_in_4bit only")
    require_bitsandbytes()
    import torch
    from transformers import BitsAndBytesConfig

    if compute_dtype in (None, "auto"):
        compute_dtype = torch.bfloat16
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def config_from_file(path: str | os.PathLike):
    """A quantization config from a JSON file: either `{"quant_method": "bitsandbytes", ...}` itself or a model's
    `config.json` holding one under `quantization_config` (transformers' `AutoQuantizationConfig` reads it)."""
    from transformers.quantizers.auto import AutoQuantizationConfig

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise QuantizationSetupError(f"--quantization_config {path}: cannot read a JSON file ({e})") from e
    data = data.get("quantization_config", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or "quant_method" not in data:
        raise QuantizationSetupError(
            f"--quantization_config {path}: expected a JSON object with a 'quant_method' key (e.g. "
            '{"quant_method": "bitsandbytes", "load_in_4bit": true})'
        )
    if data["quant_method"] == "bitsandbytes":
        require_bitsandbytes()
    try:
        return AutoQuantizationConfig.from_dict(data)
    except (ValueError, TypeError) as e:
        raise QuantizationSetupError(f"--quantization_config {path}: {e}") from e


def add_quantization_flags(parser: argparse.ArgumentParser) -> None:
    """`--load_in_4bit`, `--load_in_8bit`, `--bnb_4bit_quant_type`, `--use_bnb_nested_quant` (TRL's names) and
    `--quantization_config FILE`."""
    group = parser.add_argument_group("quantized loading (bitsandbytes; needs the quant extra)")
    add_flag(group, "load_in_4bit", action="store_true", help="load the LLM's linear layers in 4 bits")
    add_flag(group, "load_in_8bit", action="store_true", help="load the LLM's linear layers in 8 bits")
    add_flag(
        group,
        "bnb_4bit_quant_type",
        default="nf4",
        choices=BNB_4BIT_QUANT_TYPES,
        help="4-bit data type (default: nf4)",
    )
    add_flag(group, "use_bnb_nested_quant", action="store_true", help="4-bit double quantization")
    add_flag(
        group,
        "quantization_config",
        default=None,
        metavar="FILE",
        help="a JSON quantization config (any transformers quant_method), instead of the flags above",
    )


def quantization_config_from_args(args: argparse.Namespace, compute_dtype: Any = None):
    """The quantization config the flags of `add_quantization_flags` ask for, or None."""
    if args.quantization_config is not None:
        if args.load_in_4bit or args.load_in_8bit:
            raise QuantizationSetupError("--quantization_config and --load_in_4bit/--load_in_8bit exclude each other")
        return config_from_file(args.quantization_config)
    return bitsandbytes_config(
        load_in_4bit=args.load_in_4bit,
        load_in_8bit=args.load_in_8bit,
        bnb_4bit_quant_type=args.bnb_4bit_quant_type,
        use_bnb_nested_quant=args.use_bnb_nested_quant,
        compute_dtype=compute_dtype,
    )


__all__ = [
    "QUANT_EXTRA_HINT",
    "QuantizationSetupError",
    "require_bitsandbytes",
    "bitsandbytes_config",
    "config_from_file",
    "add_quantization_flags",
    "quantization_config_from_args",
]
