"""The original ``config.json`` → ParrotConfig settings: the Qwen2 text config, the multimodal fields, the image
processor and the output dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ..cli_utils import DTYPE_CHOICES
from .errors import ConversionError
from .reading import TensorInfo, read_json

logger = logging.get_logger(__name__)

# Qwen2 fields older configs may carry that a transformers-5 Qwen2Config().to_dict() no longer lists.
LEGACY_QWEN2_FIELDS = {"rope_theta", "rope_scaling", "torch_dtype", "attention_bias"}
NOT_CARRIED_QWEN2_FIELDS = {
    "architectures",
    "model_type",
    "_name_or_path",
    "transformers_version",
    "auto_map",
    "torch_dtype",
    "dtype",
    "use_cache",
}
# mm_vision_select_feature → vision_feature_select_strategy
SELECT_FEATURE = {"cls_patch": "full", "patch": "default"}
# Output dtypes of --dtype (names of torch dtypes).
OUTPUT_DTYPES = tuple(name for name in DTYPE_CHOICES if name != "auto")


def text_config_from_original(original: dict) -> dict:
    """The Qwen2 part of the original config (all Qwen2Config fields at top level)."""
    from transformers import Qwen2Config

    known = set(Qwen2Config().to_dict()) | LEGACY_QWEN2_FIELDS
    text = {k: v for k, v in original.items() if k in known and k not in NOT_CARRIED_QWEN2_FIELDS}
    text["model_type"] = "qwen2"
    return text


def multimodal_settings(original: dict) -> dict:
    """Checks the multimodal fields and returns the ParrotConfig keyword arguments they map to (plus ``do_pad`` for
    the image processor)."""
    projector = original.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ConversionError(
            f"mm_projector_type={projector!r} is not supported: Parrot's projector is 'mlp2x_gelu' (Linear, GELU, Linear)"
        )
    merge = original.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ConversionError(f"mm_patch_merge_type={merge!r} is not supported (only 'flat')")
    feature = original.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise ConversionError(f"mm_vision_select_feature={feature!r} is not supported ('cls_patch' or 'patch')")
    aspect = original.get("image_aspect_ratio", "square")
    if aspect not in ("pad", "square", None):
        raise ConversionError(f"image_aspect_ratio={aspect!r} is not supported ('pad' or 'square')")
    hidden = original["hidden_size"]
    moe_hidden = original.get("moe_hidden_size", hidden)
    if moe_hidden != hidden:
        raise ConversionError(f"moe_hidden_size={moe_hidden} differs from the LLM hidden_size={hidden}")
    use_moe = bool(original.get("use_moe", True))
    num_experts = int(original["num_experts"])
    # The original MoE adds moe_weight * X only when use_moe_residual; its module default for moe_weight is 1.0.
    if "moe_weight" not in original:
        logger.warning("config.json has no moe_weight: using the original module's default 1.0")
    residual = float(original.get("moe_weight", 1.0)) if original.get("use_moe_residual", True) else 0.0
    if use_moe and feature != "cls_patch":
        raise ConversionError(
            "use_moe=True needs mm_vision_select_feature='cls_patch' (the CLS token is the router query)"
        )
    top_k = original.get("moe_top_k")
    if top_k is not None and int(top_k) != num_experts:
        # The original forward ignores moe_top_k and always mixes all experts: the faithful conversion is dense.
        logger.warning(
            "moe_top_k=%s < num_experts=%s is ignored by the original forward (always dense); the "
            "converted model is dense too (moe_top_k=None)",
            top_k,
            num_experts,
        )
    return dict(
        vision_feature_layer=int(original.get("mm_vision_select_layer", -1)),
        vision_feature_select_strategy=SELECT_FEATURE[feature],
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        num_experts=num_experts,
        moe_intermediate_size=int(original.get("moe_intermediate_size", hidden)),
        moe_residual_weight=residual,
        use_moe=use_moe,
        moe_top_k=None,
        do_pad=aspect == "pad",
    )


def image_processor_settings(vision_folder: Path | None, do_pad: bool) -> dict:
    """The CLIP preprocessor config of the vision tower, as keyword arguments of the LLaVA (pad + CLIP) processor."""
    settings: dict[str, Any] = {"do_pad": do_pad}
    path = vision_folder / "preprocessor_config.json" if vision_folder else None
    if path is None or not path.is_file():
        logger.warning("no preprocessor_config.json for the vision tower: using CLIP ViT-L/14-336 preprocessing")
        return settings
    raw = read_json(path, "vision tower")
    size = raw.get("size")
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = raw.get("crop_size")
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    for key, value in (("size", size), ("crop_size", crop)):
        if value is not None:
            settings[key] = value
    for key in (
        "resample",
        "do_resize",
        "do_center_crop",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_convert_rgb",
    ):
        if key in raw:
            settings[key] = raw[key]
    return settings


def dtype_from_name(name: object) -> torch.dtype | None:
    """``torch.<name>`` for a dtype name such as "bfloat16" (as configs and --dtype spell them), else None."""
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


def output_dtype(name: str, original: dict, tensors: dict[str, TensorInfo]) -> torch.dtype:
    """``--dtype``: a dtype name, or "auto" = the input's declared ``torch_dtype``, else its embedding's dtype."""
    if name != "auto":
        if name not in OUTPUT_DTYPES:
            raise ConversionError(f"--dtype must be auto or one of {list(OUTPUT_DTYPES)}, got {name!r}")
        return dtype_from_name(name)
    declared = dtype_from_name(original.get("torch_dtype") or original.get("dtype"))
    if declared is not None:
        return declared
    info = tensors.get("model.embed_tokens.weight")
    if info is not None:
        for key, dtype in (
            ("BF16", torch.bfloat16),
            ("F16", torch.float16),
            ("bfloat16", torch.bfloat16),
            ("float16", torch.float16),
        ):
            if key in info.dtype:
                return dtype
    return torch.float32


__all__ = ["multimodal_settings", "text_config_from_original", "image_processor_settings", "output_dtype"]
