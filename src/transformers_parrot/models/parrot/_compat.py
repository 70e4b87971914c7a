# Copyright 2025 The transformers-parrot authors. Licensed under the Apache License, Version 2.0.
"""Every switch on the installed transformers release, in one place (supported: 4.57.x to 5.25.x).

Each entry says which release made it necessary and when it can be deleted. Features are detected, not versions
compared, wherever transformers exposes the feature itself. Published as Hub remote code next to the model,
configuration and processor files, so it imports nothing but ``torch`` and ``transformers``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import transformers
from transformers import GenerationMixin
from transformers.generation import utils as _generation_utils
from transformers.modeling_outputs import BaseModelOutputWithPast

# 5.0 split AutoModelForVision2Seq into AutoModelForImageTextToText and removed the old name, renamed
# `PretrainedConfig` to `PreTrainedConfig` and brought initialisers that skip weights already loaded from a
# checkpoint (`transformers.initialization`). Delete the 4.x branches when 4.x support ends.
IS_TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5
AutoModelForVision2Seq = getattr(transformers, "AutoModelForVision2Seq", None)
try:
    from transformers import PreTrainedConfig  # noqa: F401  (re-exported for configuration_parrot)
except ImportError:  # 4.x before the rename
    from transformers import PretrainedConfig as PreTrainedConfig  # noqa: F401
try:
    from transformers import initialization as init
except ImportError:  # 4.x
    from torch.nn import init

# 5.24 renamed `past_key_values` to `cache` (model keyword and output field; the old name is accepted with a
# FutureWarning until 5.40). Delete when the oldest supported release is 5.24: the name is then always `cache`.
CACHE_KWARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def accept_legacy_cache_kwarg(forward):
    """On 5.24+, let callers still pass `past_key_values=` (renamed to `cache=`, with transformers' own warning)."""
    if CACHE_KWARG == "past_key_values":
        return forward
    from transformers.utils.deprecation import deprecate_kwarg

    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)


# 5.25 turned Hub kernels on by default: `from_pretrained(use_kernels=None)` means True, which raises "Kernels are not
# available" without a `kernels` package in transformers' range (0.19.x) and, on a GPU, downloads kernels from the
# Hub (on CPU the default mapping has no kernel: nothing is replaced). Parrot keeps that default only where it can
# work; an explicit `use_kernels=` always wins. Delete when transformers itself falls back without `kernels`.
_RELEASE = tuple(int(part) for part in transformers.__version__.split(".")[:2])
HUB_KERNELS_BY_DEFAULT = _RELEASE >= (5, 25)


def use_kernels_kwargs(use_kernels: bool | None = None) -> dict[str, bool]:
    """The `use_kernels=` keyword for a `from_pretrained` call: the explicit value, else False where Hub kernels
    cannot load (no compatible `kernels` package, or the Hub offline); empty where transformers' default stands
    (it also obeys `USE_HUB_KERNELS`)."""
    if use_kernels is None and HUB_KERNELS_BY_DEFAULT:
        from transformers.utils.hub import is_offline_mode
        from transformers.utils.import_utils import is_kernels_available

        use_kernels = None if is_kernels_available() and not is_offline_mode() else False
    return {} if use_kernels is None else {"use_kernels": use_kernels}


# 5.0 stores tied weights as {target: source}; 4.x as a list of tied names. Delete with 4.x support.
def tied_weights_keys(mapping: dict[str, str]) -> dict[str, str] | list[str]:
    return list(mapping) if IS_TRANSFORMERS_4 else dict(mapping)


# `_keep_in_fp32_modules` (also the modules quantizers leave unconverted): 5.0 matches an entry from the start of a
# module's full name, so a class lists its submodules with their path (`prefix`); 4.x matches a bare module name
# anywhere and refuses dotted entries. Delete with 4.x support.
def keep_in_fp32_modules(names: tuple[str, ...], prefix: str = "") -> list[str]:
    return list(names) if IS_TRANSFORMERS_4 else [prefix + name for name in names]


# 5.23 renamed gradient checkpointing to activation checkpointing (`TrainingArguments.activation_checkpointing`,
# `model.activation_checkpointing_enable`); the old names warn until 6.0. Delete when the oldest supported is 5.23.
CHECKPOINTING_ARG = (
    "activation_checkpointing"
    if hasattr(transformers.PreTrainedModel, "activation_checkpointing_enable")
    else "gradient_checkpointing"
)


# 5.0 reads a `warmup_steps` below 1 as a ratio of the total steps (and deprecates `warmup_ratio`); 4.x needs
# `warmup_ratio` for that. Delete with 4.x support.
WARMUP_RATIO_ARG = "warmup_ratio" if IS_TRANSFORMERS_4 else "warmup_steps"


def training_arguments_kwargs(warmup_ratio: float | None = None, checkpointing: bool | None = None) -> dict:
    """`TrainingArguments` keywords under this release's names: a warmup as a ratio of the total steps, and
    activation (gradient) checkpointing on or off."""
    kwargs: dict[str, Any] = {}
    if warmup_ratio is not None:
        kwargs[WARMUP_RATIO_ARG] = warmup_ratio
    if checkpointing is not None:
        kwargs[CHECKPOINTING_ARG] = checkpointing
    return kwargs


def training_defaults_mixin(warmup_ratio: float) -> type:
    """A dataclass to mix in before a `TrainingArguments` subclass (TRL's configs): a warmup of `warmup_ratio` of the
    total steps and activation checkpointing on, each under this release's name. On 5.23+ TRL's configs turn
    checkpointing on under the deprecated `gradient_checkpointing` (a FutureWarning on every run): that default is
    unset, and `activation_checkpointing` is turned on unless either name was given."""
    import dataclasses

    from transformers import TrainingArguments

    meta = TrainingArguments.__dataclass_fields__
    warmup = dataclasses.field(default=warmup_ratio, metadata=meta[WARMUP_RATIO_ARG].metadata)
    spec = [(WARMUP_RATIO_ARG, float, warmup)]
    renamed = CHECKPOINTING_ARG == "activation_checkpointing"
    if renamed:
        spec.append(
            (
                "gradient_checkpointing",
                bool | None,
                dataclasses.field(default=None, metadata=meta["gradient_checkpointing"].metadata),
            )
        )

    def __post_init__(self):
        if renamed and self.gradient_checkpointing is None and self.activation_checkpointing is None:
            self.activation_checkpointing = True
        super(mixin, self).__post_init__()

    mixin = dataclasses.make_dataclass("TrainingDefaults", spec, namespace={"__post_init__": __post_init__})
    return mixin


# 4.x wraps CLIP's layers in `CLIPVisionModel.vision_model`; 5.0 dropped that level. Unwrapping keeps weight names
# identical on both. Delete with 4.x support.
def unwrap_clip_vision(model):
    return getattr(model, "vision_model", model)


# On 4.x the unwrapped tower is a plain module, so the composite model's `_init_weights` reaches CLIP's embeddings,
# whose CLS embedding is a bare parameter the generic init skips; 5.x hands the tower to CLIP's own init. Delete with
# 4.x support.
def init_legacy_clip_embedding(module, std: float) -> None:
    """On 4.x, draw the `class_embedding` of a CLIP embeddings module from N(0, std²); elsewhere nothing."""
    class_embedding = getattr(module, "class_embedding", None) if IS_TRANSFORMERS_4 else None
    if class_embedding is not None:
        init.normal_(class_embedding, mean=0.0, std=std)


# 5.15 made `generate` drop pixel_values after the prefill itself (MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL);
# before, every VLM overrode `prepare_inputs_for_generation`. 5.0-5.14 flag the prefill with `is_first_iteration`,
# 4.x only through `cache_position`. Delete when the oldest supported release is 5.15.
if hasattr(_generation_utils, "MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL"):

    class PixelValuesAtPrefillOnly:
        """Nothing to do: `generate` already feeds the images at the prefill only."""

else:

    class PixelValuesAtPrefillOnly(GenerationMixin):
        """Feed the images at the prefill only: the vision tower and MoE never run on decoding steps."""

        def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, pixel_values=None, **kwargs):
            model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
            is_prefill = kwargs.get("is_first_iteration")
            if is_prefill is None:  # 4.x
                cache_position = kwargs.get("cache_position")
                is_prefill = cache_position is None or int(cache_position[0]) == 0
            model_inputs.pop("pixel_values", None)
            if is_prefill or not kwargs.get("use_cache", True):
                model_inputs["pixel_values"] = pixel_values
            return model_inputs


# 5.0 chose between torchvision and PIL image-processor backends (`LlavaImageProcessorPil`); 4.x has one class.
def llava_image_processor_class():
    """transformers' LLaVA image processor class for this install (torchvision backend when importable)."""
    if not IS_TRANSFORMERS_4:
        try:
            import torchvision  # noqa: F401  (availability probe)
        except ImportError:
            from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

            return LlavaImageProcessorPil
    from transformers.models.llava.image_processing_llava import LlavaImageProcessor

    return LlavaImageProcessor


# 5.0 registers image processors per backend ("pil" / "torchvision"), 4.x as slow / fast; both still accept the
# slow/fast keywords. Delete with 4.x support (then pass `image_processor_classes={backend: cls}`).
def register_image_processor(config_class, image_processor_class) -> None:
    """`AutoImageProcessor.register` under the backend `image_processor_class` is built on."""
    from transformers import AutoImageProcessor

    fast = not IS_TRANSFORMERS_4 and not llava_image_processor_class().__name__.endswith("Pil")
    AutoImageProcessor.register(
        config_class, exist_ok=True, **{("fast" if fast else "slow") + "_image_processor_class": image_processor_class}
    )


# ---- Folders readable by both majors. A folder saved on 5.x must load on 4.57 (remote code is used on whatever
# transformers a Hub user has). Delete the writers below with 4.x support; the readers with 5.x-saved-only folders.


def add_legacy_rope_fields(config_dict: dict[str, Any]) -> dict[str, Any]:
    """5.0 saves the LLM's RoPE settings only as `rope_parameters`, which 4.x ignores (silently falling back to
    rope_theta=10000): also write the 4.x fields `rope_theta` / `rope_scaling` into `text_config`."""
    text = config_dict.get("text_config")
    rope = text.get("rope_parameters") if isinstance(text, dict) else None
    if isinstance(rope, dict) and "rope_theta" in rope:
        text["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            text["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return config_dict


def drop_legacy_rope_fields(text_config: dict[str, Any]) -> dict[str, Any]:
    """On 5.x, read `rope_parameters` and ignore the 4.x copies written by `add_legacy_rope_fields`."""
    if not IS_TRANSFORMERS_4 and isinstance(text_config.get("rope_parameters"), dict):
        text_config.pop("rope_theta", None)
        text_config.pop("rope_scaling", None)
    return text_config


def make_processor_files_portable(directory: Path) -> None:
    """Rewrite what 5.x writes and 4.57 cannot read: the `...Pil` image-processor class name (4.x knows only the
    base name) and the list form of `extra_special_tokens` (4.57 expects a dict and reads
    `additional_special_tokens`; it fails with a misleading protobuf message otherwise)."""

    def fix_image_processor(config: dict) -> bool:
        name = config.get("image_processor_type")
        if isinstance(name, str) and name.endswith("Pil"):
            config["image_processor_type"] = name[: -len("Pil")]
            return True
        return False

    def fix_processor(config: dict) -> bool:
        nested = config.get("image_processor")
        return isinstance(nested, dict) and fix_image_processor(nested)

    def fix_tokenizer(config: dict) -> bool:
        extra = config.get("extra_special_tokens")
        if not isinstance(extra, list):
            return False
        merged = list(config.get("additional_special_tokens") or [])
        config["additional_special_tokens"] = merged + [t for t in extra if t not in merged]
        del config["extra_special_tokens"]
        return True

    for name, fixer in (
        ("preprocessor_config.json", fix_image_processor),
        ("processor_config.json", fix_processor),
        ("tokenizer_config.json", fix_tokenizer),
    ):
        path = Path(directory) / name
        if path.is_file():
            config = json.loads(path.read_text(encoding="utf-8"))
            if fixer(config):
                path.write_text(
                    json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
                )


# 4.x finds a processor's parts through class attributes (5.0 reads them from `__init__` and warns about the
# attributes), and its `apply_chat_template` tokenizes only list contents. Delete with 4.x support (processors then
# derive from `ProcessorMixin` itself, as on 5.x).
if IS_TRANSFORMERS_4:
    from transformers.processing_utils import ProcessorMixin as _ProcessorMixin

    class ImageTextProcessorMixin(_ProcessorMixin):
        attributes = ["image_processor", "tokenizer"]
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

        def apply_chat_template(self, conversation, *args, **kwargs):
            """String contents become ``[{"type": "text", "text": ...}]`` first (the rendered text is the same)."""

            def listify(message):
                if isinstance(message, dict) and isinstance(message.get("content"), str):
                    return {**message, "content": [{"type": "text", "text": message["content"]}]}
                return message

            batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
            conversation = (
                [[listify(m) for m in c] for c in conversation] if batched else [listify(m) for m in conversation]
            )
            return super().apply_chat_template(conversation, *args, **kwargs)

else:
    from transformers.processing_utils import ProcessorMixin as ImageTextProcessorMixin  # noqa: F401  (re-exported)
