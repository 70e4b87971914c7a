"""vLLM multimodal processor for Parrot: `<image>` expansion, pixel preprocessing and prompt-keyed routing inputs.

Parrot's MoE routes each image by the prompt's guidance tokens (`modeling_parrot.guidance_mask`: every prompt token
except image tokens and earlier assistant answers). vLLM keys its processor cache, encoder cache and prefix cache by
each image item's hash, which covers the image (or a client uuid) and the processor kwargs but not the prompt. So
`ParrotMultiModalProcessor.apply` adds the prompt's guidance token ids to the processor kwargs: every image's hash,
hence every cache entry, is keyed by image *and* guidance, and each image item carries its guidance ids
(`GUIDANCE_FIELD`) to `embed_multimodal`, where the MoE runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict, MultiModalInput
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.multimodal.processing.context import TimingContext
from vllm.multimodal.processing.inputs import ProcessorInputs

from ..models.parrot.configuration_parrot import ParrotConfig
from ..models.parrot.modeling_parrot import guidance_mask
from ..models.parrot.processing_parrot import IMAGE_TOKEN, ParrotProcessor

GUIDANCE_KWARG = "parrot_guidance_ids"
"""Processor kwarg holding the prompt's guidance token ids: part of every image item's hash (cache key)."""
GUIDANCE_FIELD = "guidance_ids"
"""Per-image model input: the guidance token ids (G,) of the prompt the image belongs to."""


def guidance_token_ids(prompt: Sequence[int], config: ParrotConfig) -> list[int]:
    """The ids of the prompt's tokens that guide the router, in prompt order (image tokens and answers left out)."""
    input_ids = torch.tensor([list(prompt)], dtype=torch.long)
    matches = [input_ids == token_id for token_id in config.assistant_header_ids]
    mask = guidance_mask(matches, input_ids == config.image_token_id)
    return input_ids[mask].tolist()


class ParrotProcessingInfo(BaseProcessingInfo):
    """Static facts vLLM asks about Parrot: its config, HF processor and image token count."""

    def get_hf_config(self) -> ParrotConfig:
        return self.ctx.get_hf_config(ParrotConfig)

    def get_hf_processor(self, **kwargs: object) -> ParrotProcessor:
        return self.ctx.get_hf_processor(ParrotProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_hf_config().image_seq_length}

    def get_image_size(self) -> int:
        """Side of the square image the vision tower takes (every image is padded and resized to it)."""
        return self.get_hf_config().vision_config.image_size


class ParrotDummyInputsBuilder(BaseDummyInputsBuilder[ParrotProcessingInfo]):
    """Profiling inputs: `<image>` placeholders and images of the vision tower's size."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_TOKEN * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: MultiModalDummyOptions,
    ) -> MultiModalDataDict:
        size = self.info.get_image_size()
        images = self._get_dummy_images(
            width=size, height=size, num_images=mm_counts.get("image", 0), overrides=mm_options.get("image")
        )
        return {"image": images}


class ParrotMultiModalProcessor(BaseMultiModalProcessor[ParrotProcessingInfo]):
    """Expands each `<image>` to `image_seq_length` image tokens and keys every image by image + prompt guidance."""

    def apply(self, inputs: ProcessorInputs, timing_ctx: TimingContext) -> MultiModalInput:
        config = self.info.get_hf_config()
        num_placeholders = sum(1 for token in inputs.prompt if token == config.image_token_id)
        num_images = inputs.mm_data_items.get_all_counts().get("image", 0)
        if num_placeholders != num_images:
            raise ValueError(
                f"The prompt has {num_placeholders} {IMAGE_TOKEN} placeholder(s) but {num_images} image(s) were "
                f"given: put one {IMAGE_TOKEN} in the prompt per image (chat messages do this for image_url parts)"
            )
        guidance = guidance_token_ids(inputs.prompt, config)
        inputs = replace(inputs, hf_processor_mm_kwargs={**inputs.hf_processor_mm_kwargs, GUIDANCE_KWARG: guidance})
        return super().apply(inputs, timing_ctx)

    def _get_hf_mm_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_TOKEN * mm_counts.get("image", 0)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """Preprocess the images with `ParrotProcessor` and attach the guidance ids to each of them."""
        hf_kwargs = dict(hf_kwargs)
        guidance = torch.tensor(hf_kwargs.pop(GUIDANCE_KWARG), dtype=torch.long)
        outputs = super()._call_hf_processor(hf_data, hf_kwargs)
        outputs[GUIDANCE_FIELD] = guidance.repeat(outputs["pixel_values"].shape[0], 1)
        return outputs

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            GUIDANCE_FIELD: MultiModalFieldConfig.batched("image"),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        image_token_id = config.image_token_id
        return [
            PromptReplacement(
                modality="image",
                target=[image_token_id],
                replacement=[image_token_id] * config.image_seq_length,
            )
        ]


__all__ = [
    "GUIDANCE_FIELD",
    "GUIDANCE_KWARG",
    "ParrotDummyInputsBuilder",
    "ParrotMultiModalProcessor",
    "ParrotProcessingInfo",
    "guidance_token_ids",
]
