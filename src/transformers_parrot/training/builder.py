"""Assemble a fresh Parrot from a CLIP vision checkpoint and a Qwen2 chat LLM checkpoint (paper §3, stage 1 input),
and merge LoRA-trained models back into plain checkpoints."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers.utils import logging

from ..models.parrot._compat import unwrap_clip_vision, use_kernels_kwargs
from ..models.parrot.configuration_parrot import ParrotConfig, tokens_per_image
from ..models.parrot.modeling_parrot import ParrotForConditionalGeneration
from ..models.parrot.processing_parrot import IM_END, IMAGE_TOKEN, ParrotProcessor, default_image_processor
from .recipes import STAGE_CONFIG

logger = logging.get_logger(__name__)


def _vision_model(name_or_path: str, dtype, **hub_kwargs):
    """A CLIP vision tower (from a CLIPVisionModel or a full CLIPModel checkpoint), unwrapped on transformers 4.x."""
    from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel

    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    vision_config = config.vision_config if hasattr(config, "vision_config") else config
    if not isinstance(vision_config, CLIPVisionConfig):
        raise ValueError(f"{name_or_path}: expected a CLIP vision checkpoint, got {type(vision_config).__name__}")
    model = CLIPVisionModel.from_pretrained(name_or_path, dtype=dtype, **use_kernels_kwargs(), **hub_kwargs)
    return unwrap_clip_vision(model), vision_config


def build_parrot_from_pretrained(
    vision_model_name_or_path: str | os.PathLike,
    llm_name_or_path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    image_processor=None,
    seed: int | None = 0,
    hub_kwargs: dict[str, Any] | None = None,
    **config_overrides: Any,
) -> tuple[ParrotForConditionalGeneration, ParrotProcessor]:
    """CLIP vision checkpoint + Qwen2 chat LLM checkpoint (local paths or Hub ids) → (model, processor).

    - `<image>` is added to the LLM's tokenizer as a special token; the embeddings are resized only when the new id
      does not fit in the existing (spare) rows, and a new row is initialised to the mean embedding.
    - The image processor follows the vision checkpoint's size (pad to square + CLIP preprocessing), the number of
      visual tokens per image follows the vision config (CLS kept: (size/patch)² + 1).
    - Projector, router and experts are freshly initialised (`seed`); `use_moe` defaults to False (stage 1).
    - `config_overrides` go to `ParrotConfig` (num_experts, moe_intermediate_size, moe_residual_weight, ...).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub_kwargs = dict(hub_kwargs or {})
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(llm_name_or_path, **hub_kwargs)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id) or list(
        tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    ) != [tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)]:
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"

    vision_tower, vision_config = _vision_model(str(vision_model_name_or_path), dtype, **hub_kwargs)
    llm = AutoModelForCausalLM.from_pretrained(llm_name_or_path, dtype=dtype, **use_kernels_kwargs(), **hub_kwargs)
    text_config = llm.config
    if text_config.model_type != "qwen2":
        logger.warning(
            "LLM %s is a %s model; Parrot was released on Qwen2 (Qwen1.5) LLMs",
            llm_name_or_path,
            text_config.model_type,
        )

    image_size = vision_config.image_size
    if image_processor is None:
        image_processor = default_image_processor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    strategy = config_overrides.get("vision_feature_select_strategy", "full")
    seq_len = tokens_per_image(image_size, vision_config.patch_size, strategy)
    processor = ParrotProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=seq_len)

    needed_rows = len(tokenizer)
    resized = needed_rows > llm.get_input_embeddings().weight.shape[0]
    if resized:
        llm.resize_token_embeddings(needed_rows, mean_resizing=True)
        text_config = llm.config
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    config_overrides.setdefault("use_moe", False)
    config_overrides.setdefault("tie_word_embeddings", bool(getattr(text_config, "tie_word_embeddings", False)))
    config = ParrotConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=processor.image_token_id,
        assistant_header_ids=processor.assistant_header_ids,
        image_seq_length=seq_len,
        **config_overrides,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = ParrotForConditionalGeneration(config)
    if dtype not in (None, "auto"):
        model.to(dtype)
    # pretrained parts; projector, router and experts keep their fresh init
    missing, unexpected = model.model.vision_tower.load_state_dict(vision_tower.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"vision weights do not fit: missing {missing}, unexpected {unexpected}")
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.config.text_config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info(
        "built Parrot: %s + %s, <image> id %d, embeddings %s",
        vision_model_name_or_path,
        llm_name_or_path,
        processor.image_token_id,
        "resized" if resized else "kept (spare rows)",
    )
    return model, processor


def merge_lora(model) -> ParrotForConditionalGeneration:
    """A PEFT-wrapped Parrot (LoRA on the LLM, projector/MoE in modules_to_save) → a plain
    `ParrotForConditionalGeneration` with the adapters merged in."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    elif hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if not isinstance(model, ParrotForConditionalGeneration):
        raise TypeError(f"merge_lora expects a (PEFT-wrapped) ParrotForConditionalGeneration, got {type(model)}")
    return model


def save_merged(model, processor, output_dir: str | os.PathLike, **save_kwargs) -> ParrotForConditionalGeneration:
    """Merge LoRA adapters (if any) and save a plain checkpoint + processor loadable with `from_pretrained`."""
    merged = merge_lora(model)
    merged.save_pretrained(output_dir, **save_kwargs)
    if processor is not None:
        processor.save_pretrained(output_dir)
    return merged


def merge_adapter_checkpoint(
    base_model_path: str | os.PathLike, adapter_path: str | os.PathLike, output_dir: str | os.PathLike, **load_kwargs
) -> ParrotForConditionalGeneration:
    """Merge a LoRA adapter saved by the recipes (an output folder or a `checkpoint-N` folder) onto its base Parrot
    checkpoint and save a plain checkpoint + processor to `output_dir`: the same model as the run's own
    `<output_dir>/merged`.

    The config comes from the adapter folder, where the trainers save it: the recipe changed it while training
    (stage 2 turns `use_moe` on), so the base checkpoint's config no longer describes the trained model. An adapter
    folder without one (saved by an older version) gets the base config with the stage-2 changes of `STAGE_CONFIG`,
    the only stage that trains adapters, and a warning. An adapter trained on a k-bit base (QLoRA) is merged onto
    the base loaded unquantized (`load_kwargs`, e.g. `dtype=torch.bfloat16`): the result is a plain checkpoint.
    """
    from peft import PeftModel
    from transformers.utils import CONFIG_NAME, cached_file

    # (a folder without config.json would load as a default config, not fail)
    if cached_file(adapter_path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False) is not None:
        config = ParrotConfig.from_pretrained(adapter_path)
    else:
        config = ParrotConfig.from_pretrained(base_model_path)
        for key, value in STAGE_CONFIG[2].items():
            setattr(config, key, value)
        logger.warning(
            "%s holds no config.json (saved by an older version): using %s's config with the stage-2 "
            "recipe's changes %s",
            adapter_path,
            base_model_path,
            STAGE_CONFIG[2],
        )
    # a k-bit (QLoRA) run saved its quantization config with the adapter: the base is reloaded unquantized
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    base = ParrotForConditionalGeneration.from_pretrained(base_model_path, config=config, **load_kwargs)
    model = PeftModel.from_pretrained(base, adapter_path)
    try:
        processor = ParrotProcessor.from_pretrained(adapter_path)
    except (OSError, ValueError):
        processor = ParrotProcessor.from_pretrained(base_model_path)
    return save_merged(model, processor, output_dir)


__all__ = ["build_parrot_from_pretrained", "merge_lora", "save_merged", "merge_adapter_checkpoint"]
