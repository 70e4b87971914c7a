"""Tiny Parrot models built offline from the bundled multilingual tokenizer: for tests, the quickstart, the demo
and benchmarks. Nothing here downloads anything.
"""

from __future__ import annotations

from typing import Any

import torch

from .assets import TINY_TOKENIZER_DIR
from .models.parrot.configuration_parrot import ParrotConfig, tokens_per_image
from .models.parrot.image_processing_parrot import ParrotImageProcessor
from .models.parrot.modeling_parrot import ParrotForConditionalGeneration
from .models.parrot.processing_parrot import ParrotProcessor

TINY_VISION_CONFIG: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 30,
    "patch_size": 10,
    "projection_dim": 32,
}
TINY_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}

# bitsandbytes quantizes in blocks of 64 columns: every quantized (LLM) linear layer must be a multiple of 64 wide
# (q/k/v/o 64, gate/up/down 128). Also vLLM's CPU attention needs head size >= 32 (2 heads of 32).
TINY_QUANTIZABLE_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def tiny_processor(image_size: int | None = None, **kwargs: Any) -> ParrotProcessor:
    """Processor over the bundled tiny tokenizer with a small pad-to-square CLIP image processor (`image_size` px)."""
    from transformers import AutoTokenizer

    image_size = image_size or TINY_VISION_CONFIG["image_size"]
    patch = kwargs.pop("patch_size", TINY_VISION_CONFIG["patch_size"])
    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    image_processor = ParrotImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    seq_len = kwargs.pop("image_seq_length", tokens_per_image(image_size, patch))
    return ParrotProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=seq_len, **kwargs)


def config_for_processor(
    processor: ParrotProcessor,
    vision_config: dict[str, Any] | None = None,
    text_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> ParrotConfig:
    """A ParrotConfig whose vocabulary, special ids and image length match `processor`'s tokenizer."""
    tokenizer = processor.tokenizer
    text = {**TINY_TEXT_CONFIG, **(text_config or {})}
    text.setdefault("vocab_size", len(tokenizer))
    text.setdefault("pad_token_id", tokenizer.pad_token_id)
    text.setdefault("eos_token_id", tokenizer.convert_tokens_to_ids("<|im_end|>"))
    vision = {**TINY_VISION_CONFIG, **(vision_config or {})}
    overrides.setdefault("num_experts", 6)
    overrides.setdefault("moe_intermediate_size", text["hidden_size"])
    return ParrotConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        assistant_header_ids=processor.assistant_header_ids,
        image_seq_length=processor.image_seq_length,
        **overrides,
    )


def tiny_config(**overrides: Any) -> ParrotConfig:
    """Config of the tiny test model (vision 30 px / patch 10 → 10 visual tokens, hidden 32, 6 experts)."""
    return config_for_processor(tiny_processor(), **overrides)


def tiny_model(seed: int = 0, processor: ParrotProcessor | None = None, quantizable: bool = False, **overrides: Any):
    """A randomly initialised tiny Parrot (deterministic for `seed`) and its processor.

    `quantizable`: an LLM wide enough for bitsandbytes' 64-column blocks (`TINY_QUANTIZABLE_TEXT_CONFIG`).
    The router and experts get a larger init than the usual 0.02 so that routing visibly depends on the prompt.
    """
    processor = processor or tiny_processor()
    if quantizable:
        overrides["text_config"] = {**TINY_QUANTIZABLE_TEXT_CONFIG, **(overrides.get("text_config") or {})}
    config = config_for_processor(processor, **overrides)
    torch.manual_seed(seed)
    model = ParrotForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.moe.gate.weight.normal_(0.0, 1.0)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


__all__ = [
    "tiny_processor",
    "tiny_config",
    "tiny_model",
    "config_for_processor",
    "TINY_VISION_CONFIG",
    "TINY_QUANTIZABLE_TEXT_CONFIG",
]
