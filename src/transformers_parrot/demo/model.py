"""The demo's small Parrot, built from scratch offline: a CLIP-style vision tower, a Qwen2-style LLM, the
multilingual MoE and the bundled tiny multilingual tokenizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..tiny import config_for_processor, tiny_processor
from .data import IMAGE_SIZE


@dataclass
class DemoModelConfig:
    """Sizes of the demo model (defaults: about 1.4M parameters, fast on two CPU cores)."""

    image_size: int = IMAGE_SIZE
    patch_size: int = 12  # 4x4 patches + CLS = 17 visual tokens
    vision_hidden: int = 64
    vision_layers: int = 3  # Parrot feeds layer -2 to the projector: 2 effective layers
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    num_experts: int = 6
    moe_intermediate_size: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


def build_demo_model(seed: int = 0, sizes: DemoModelConfig | None = None):
    """A randomly initialised Parrot (deterministic for `seed`) and its processor; `use_moe=False` (stage 1)."""
    from ..models.parrot.modeling_parrot import ParrotForConditionalGeneration

    sizes = sizes or DemoModelConfig()
    processor = tiny_processor(image_size=sizes.image_size, patch_size=sizes.patch_size)
    vision = {
        "hidden_size": sizes.vision_hidden,
        "intermediate_size": 2 * sizes.vision_hidden,
        "num_hidden_layers": sizes.vision_layers,
        "num_attention_heads": sizes.vision_heads,
        "image_size": sizes.image_size,
        "patch_size": sizes.patch_size,
        "projection_dim": sizes.vision_hidden,
    }
    text = {
        "hidden_size": sizes.text_hidden,
        "intermediate_size": 2 * sizes.text_hidden,
        "num_hidden_layers": sizes.text_layers,
        "num_attention_heads": sizes.text_heads,
        "num_key_value_heads": sizes.text_kv_heads,
        "max_position_embeddings": 512,
    }
    config = config_for_processor(
        processor,
        vision_config=vision,
        text_config=text,
        num_experts=sizes.num_experts,
        moe_intermediate_size=sizes.moe_intermediate_size,
        use_moe=False,
    )
    torch.manual_seed(seed)
    model = ParrotForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model, processor
