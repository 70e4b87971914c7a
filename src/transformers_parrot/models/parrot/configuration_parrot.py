# Copyright 2025 The transformers-parrot authors. Licensed under the Apache License, Version 2.0.
"""Parrot configuration.

Parrot (arXiv 2406.02539) is LLaVA with one extra module between the projector and the LLM: a text-guided
Mixture-of-Experts that turns English-biased visual tokens into language-specific ones. This file is also
published as Hub remote code, so it imports nothing but ``transformers``.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import AutoConfig, CLIPVisionConfig, Qwen2Config

from ._compat import PreTrainedConfig, add_legacy_rope_fields, drop_legacy_rope_fields

# CLIP ViT-L/14 at 336 px, the vision tower of every released Parrot.
DEFAULT_VISION_CONFIG: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}

# Qwen1.5-7B-Chat, the LLM of Parrot-7B.
DEFAULT_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

# `<|im_start|>assistant\n` in Qwen's tokenizer.
DEFAULT_ASSISTANT_HEADER_IDS = [151644, 77091, 198]
# The `<image>` token the converter appends after Qwen's 151646 tokenizer entries (fits in the spare rows).
DEFAULT_IMAGE_TOKEN_ID = 151646


def tokens_per_image(image_size: int, patch_size: int, strategy: str = "full") -> int:
    """Visual tokens of one image: (image_size / patch_size)² patches, plus the CLS token with the "full" strategy
    (577 for CLIP ViT-L/14 at 336 px)."""
    return (image_size // patch_size) ** 2 + (1 if strategy == "full" else 0)


def _as_config(value: Any, default: dict[str, Any]):
    """Turn ``None`` / a dict / a config into a config object of the right ``model_type``."""
    if value is None:
        value = dict(default)
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default["model_type"])
        return AutoConfig.for_model(model_type, **drop_legacy_rope_fields(value))
    return value


class ParrotConfig(PreTrainedConfig):
    r"""
    Configuration of a [`ParrotForConditionalGeneration`]: a vision tower, a 2-layer MLP projector, the multilingual
    MoE of Parrot and a causal LM. Defaults give Parrot-7B (CLIP ViT-L/14-336 + Qwen1.5-7B-Chat).

    Args:
        vision_config (`dict` or `CLIPVisionConfig`, *optional*): vision tower config (default CLIP ViT-L/14-336).
        text_config (`dict` or `Qwen2Config`, *optional*): LLM config (default Qwen1.5-7B-Chat shapes).
        image_token_id (`int`): id of the `<image>` placeholder token.
        vision_feature_layer (`int`): hidden-state index of the vision tower fed to the projector (-2).
        vision_feature_select_strategy (`str`): "full" keeps the CLS token (Parrot: it is the router's query);
            "default" drops it as LLaVA does (the router then uses the first patch token as the query).
        projector_hidden_act (`str`): activation between the two projector layers.
        multimodal_projector_bias (`bool`): whether the projector layers have biases.
        image_seq_length (`int`): tokens per image (577 = 1 CLS + 24x24 patches); must match the vision config.
        num_experts (`int`): number of SwiGLU experts E.
        moe_intermediate_size (`int`): intermediate size of each expert (default: the LLM hidden size).
        moe_residual_weight (`float`): λ in X' = Σ_e w_e E_e(X) + λ·X (the original's `moe_weight`).
        use_moe (`bool`): False bypasses the MoE (stage 1), X' = X.
        moe_top_k (`int`, *optional*): None = dense mixture of all experts (as released); k = keep the k largest
            router weights, renormalised, and compute only those experts.
        assistant_header_ids (`list[int]`): ids opening an assistant turn; tokens after it up to the next
            `<|im_start|>` are answers and never guide the router.
        initializer_range (`float`): std of the normal init of the projector, router and experts.
    """

    model_type = "parrot"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}
    attribute_map = {"image_token_index": "image_token_id"}

    def __init__(
        self,
        vision_config: dict | CLIPVisionConfig | None = None,
        text_config: dict | Qwen2Config | None = None,
        image_token_id: int = DEFAULT_IMAGE_TOKEN_ID,
        vision_feature_layer: int = -2,
        vision_feature_select_strategy: str = "full",
        projector_hidden_act: str = "gelu",
        multimodal_projector_bias: bool = True,
        image_seq_length: int | None = None,
        num_experts: int = 6,
        moe_intermediate_size: int | None = None,
        moe_residual_weight: float = 0.1,
        use_moe: bool = True,
        moe_top_k: int | None = None,
        assistant_header_ids: list[int] | None = None,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vision_config = _as_config(vision_config, DEFAULT_VISION_CONFIG)
        self.text_config = _as_config(text_config, DEFAULT_TEXT_CONFIG)
        if vision_feature_select_strategy not in ("full", "default"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'full' (keep CLS) or 'default' (drop CLS), "
                f"got {vision_feature_select_strategy!r}"
            )
        if not isinstance(vision_feature_layer, int):
            raise ValueError(f"vision_feature_layer must be one int, got {vision_feature_layer!r}")
        expected_seq = self._vision_seq_length(vision_feature_select_strategy)
        if image_seq_length is None:
            image_seq_length = expected_seq
        if expected_seq is not None and image_seq_length != expected_seq:
            raise ValueError(
                f"image_seq_length={image_seq_length} does not match the vision config, which gives "
                f"{expected_seq} tokens per image (image_size / patch_size squared"
                f"{' + 1 CLS' if vision_feature_select_strategy == 'full' else ''})"
            )
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if moe_top_k is not None and not 1 <= moe_top_k <= num_experts:
            raise ValueError(f"moe_top_k must be None or in [1, num_experts={num_experts}], got {moe_top_k}")

        self.image_token_id = image_token_id
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.projector_hidden_act = projector_hidden_act
        self.multimodal_projector_bias = multimodal_projector_bias
        self.image_seq_length = image_seq_length
        self.num_experts = num_experts
        self.moe_intermediate_size = (
            moe_intermediate_size if moe_intermediate_size is not None else self.text_config.hidden_size
        )
        self.moe_residual_weight = float(moe_residual_weight)
        self.use_moe = use_moe
        self.moe_top_k = moe_top_k
        self.assistant_header_ids = list(
            assistant_header_ids if assistant_header_ids is not None else DEFAULT_ASSISTANT_HEADER_IDS
        )
        if len(self.assistant_header_ids) < 2:
            raise ValueError(
                "assistant_header_ids must hold at least 2 ids (`<|im_start|>` then the role tokens), "
                f"got {self.assistant_header_ids}"
            )
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _vision_seq_length(self, strategy: str) -> int | None:
        image_size = getattr(self.vision_config, "image_size", None)
        patch_size = getattr(self.vision_config, "patch_size", None)
        if not image_size or not patch_size:
            return None
        return tokens_per_image(image_size, patch_size, strategy)

    def to_json_string(self, use_diff: bool = True) -> str:
        """As transformers writes it, plus the LLM's RoPE settings in the 4.x form (see `add_legacy_rope_fields`)."""
        return (
            json.dumps(add_legacy_rope_fields(json.loads(super().to_json_string(use_diff))), indent=2, sort_keys=True)
            + "\n"
        )


__all__ = ["ParrotConfig", "tokens_per_image"]
