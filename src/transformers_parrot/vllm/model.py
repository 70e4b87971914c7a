"""Parrot as a vLLM model: vLLM's CLIP vision tower and Qwen2 LLM, Parrot's projector and text-guided MoE.

The MoE runs in `embed_multimodal`, where each image arrives with the guidance token ids of its own prompt
(see `processing.py`): its output depends on image and prompt, and so does every cache key vLLM files it under.
The MoE (a few hundred million parameters at 7B) is replicated on every tensor-parallel rank.

Shapes: N images, L tokens per image, D LLM hidden size, G guidance tokens (padded to the longest in the batch).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from vllm.config import VllmConfig
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    get_layer_index,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from ..models.parrot.configuration_parrot import ParrotConfig
from ..models.parrot.modeling_parrot import ParrotMultilingualMoE
from ..models.parrot.processing_parrot import IMAGE_TOKEN
from .processing import (
    GUIDANCE_FIELD,
    ParrotDummyInputsBuilder,
    ParrotMultiModalProcessor,
    ParrotProcessingInfo,
)


class ParrotProjector(nn.Module):
    """The "mlp2x_gelu" projector, tensor-parallel: column-parallel Linear → act → row-parallel Linear."""

    def __init__(self, config: ParrotConfig, prefix: str = ""):
        super().__init__()
        text_hidden = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = ColumnParallelLinear(
            config.vision_config.hidden_size, text_hidden, bias=bias, prefix=f"{prefix}.linear_1"
        )
        self.act = get_act_fn(config.projector_hidden_act)
        self.linear_2 = RowParallelLinear(text_hidden, text_hidden, bias=bias, prefix=f"{prefix}.linear_2")

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N, L, vision_hidden) → (N, L, D)."""
        hidden, _ = self.linear_1(image_features)
        hidden, _ = self.linear_2(self.act(hidden))
        return hidden


def _pad_guidance(guidance_ids: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image guidance ids → (N, G) ids padded with 0 and the (N, G) bool mask of real tokens."""
    if isinstance(guidance_ids, torch.Tensor):
        return guidance_ids, torch.ones_like(guidance_ids, dtype=torch.bool)
    lengths = torch.tensor([len(ids) for ids in guidance_ids], device=guidance_ids[0].device)
    padded = pad_sequence(list(guidance_ids), batch_first=True, padding_value=0)
    mask = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
    return padded, mask


@MULTIMODAL_REGISTRY.register_processor(
    ParrotMultiModalProcessor, info=ParrotProcessingInfo, dummy_inputs=ParrotDummyInputsBuilder
)
class ParrotForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """Parrot for vLLM; loads the weights of a folder saved by `transformers_parrot`."""

    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "model.vision_tower.": "vision_tower.vision_model.",
            "model.multi_modal_projector.": "multi_modal_projector.",
            "model.moe.": "moe.",
            "lm_head.": "language_model.lm_head.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_TOKEN
        raise ValueError(f"Parrot takes images only, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: ParrotConfig = vllm_config.model_config.hf_config
        self.config = config
        self.configure_mm_token_handling(
            vocab_size=config.text_config.vocab_size, mm_token_ids=[config.image_token_id]
        )
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = CLIPVisionModel(
                config.vision_config,
                quant_config=vllm_config.quant_config,
                num_hidden_layers_override=get_layer_index(
                    config.vision_feature_layer, config.vision_config.num_hidden_layers
                ),
                require_post_norm=False,
                prefix=maybe_prefix(prefix, "vision_tower"),
            )
            self.multi_modal_projector = ParrotProjector(config, prefix=maybe_prefix(prefix, "multi_modal_projector"))
            self.moe = ParrotMultilingualMoE(config)  # saved even when `use_moe=False` bypasses it
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.vision_config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"pixel_values must have shape (num_images, 3, {size}, {size}), got {tuple(pixel_values.shape)}"
            )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Visual tokens (N, L, D) after vision tower, projector and the MoE routed by each image's own prompt."""
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, list):
            pixel_values = torch.stack(pixel_values)
        self._check_pixel_values(pixel_values)
        features = self.vision_tower(
            pixel_values.to(self.vision_tower.dtype),
            feature_select_strategy=self.config.vision_feature_select_strategy,
        )
        features = self.multi_modal_projector(features)
        if not self.config.use_moe:
            return features
        guidance_ids, guidance_mask = _pad_guidance(kwargs[GUIDANCE_FIELD])
        text_embeds = self.language_model.embed_input_ids(guidance_ids.to(features.device))
        image_to_sample = torch.arange(features.shape[0], device=features.device)
        mixed, _ = self.moe(
            features, text_embeds.to(features.dtype), guidance_mask.to(features.device), image_to_sample
        )
        return mixed

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        """Flattened batch tokens (T,) or their embeddings (T, D), with image embeddings already merged in."""
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


__all__ = ["ParrotForConditionalGeneration", "ParrotProjector"]
