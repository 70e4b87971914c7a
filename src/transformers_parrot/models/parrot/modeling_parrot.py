# Copyright 2025 The transformers-parrot authors. Licensed under the Apache License, Version 2.0.
"""PyTorch Parrot: LLaVA plus a text-guided multilingual Mixture-of-Experts on the visual tokens.

Shapes used in docstrings: B batch, S sequence, N images in the batch, L tokens per image, D LLM hidden size,
E experts, I expert intermediate size. This file is also published as Hub remote code, so it imports nothing
but ``torch`` and ``transformers`` (plus its sibling configuration file).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from ._compat import (
    CACHE_KWARG,
    PixelValuesAtPrefillOnly,
    accept_legacy_cache_kwarg,
    init,
    init_legacy_clip_embedding,
    keep_in_fp32_modules,
    tied_weights_keys,
    unwrap_clip_vision,
    use_kernels_kwargs,
)
from .configuration_parrot import ParrotConfig


def _distributed_world_size() -> int:
    """Number of processes of the default process group (1 when torch.distributed is not initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _attended_tokens(attention_mask, seq_len: int) -> torch.Tensor | None:
    """(B, S) bool: which of the current S tokens are real (not padding), from any mask form transformers passes.

    A 2-D padding mask is used as is (its last S columns); a 4-D mask (B, 1, S, K) — e.g. the dict of masks
    `generate` builds for a static cache — marks a token real when it may attend to itself (pads attend to nothing).
    Images are encoded at prefill, where the S current tokens are the first S keys. None: no padding information.
    """
    if isinstance(attention_mask, dict):
        attention_mask = attention_mask.get("full_attention", next(iter(attention_mask.values()), None))
    if not isinstance(attention_mask, torch.Tensor):
        return None
    if attention_mask.ndim == 2:
        return attention_mask[:, -seq_len:].bool()
    if attention_mask.ndim == 4:
        diagonal = torch.diagonal(attention_mask[:, 0, :seq_len, :seq_len], dim1=-2, dim2=-1)
        return diagonal if diagonal.dtype == torch.bool else diagonal == 0  # additive float masks: 0 = attend
    return None


def guidance_mask(
    header_matches: list[torch.Tensor], image_mask: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, S) bool: the tokens that guide the router, i.e. the prompt.

    header_matches: one (B, S) bool mask per id of `config.assistant_header_ids` (`<|im_start|>` first), true where
    the token is that id; image_mask (B, S): image tokens; attention_mask: any form transformers passes, or None.
    Every attended, non-image token except assistant answers guides: a token is an answer when an assistant header
    ended before it and no `<|im_start|>` came since. Labels are never needed,
    so the router sees the same text at training (prompt + answer) as at generation (prompt only).

    Example: 10 tokens of a left-padded training sample, 1 = guidance:

        <pad> <|im_start|> user <image> 你好 <|im_end|> <|im_start|> assistant \\n 红色
          0        1        1      0     1       1          1           1      1    0

    `<pad>` is not attended, `<image>` is an image token, and `红色` follows the assistant header
    `<|im_start|> assistant \\n` with no `<|im_start|>` since: it is the answer (its `<|im_end|>` would be too).
    The header itself guides, as at generation, where the prompt ends with it.
    """
    header_len = len(header_matches)
    seq_len = image_mask.shape[1]
    header_end = torch.ones_like(image_mask)
    for offset, match in enumerate(header_matches):  # the header must end at position p: token k at p - (H-1) + k
        shift = header_len - 1 - offset
        header_end = header_end & F.pad(match, (shift, 0), value=False)[:, :seq_len]
    positions = torch.arange(seq_len, device=image_mask.device).expand_as(image_mask)
    none = torch.full_like(positions, -1)
    last_header_end = torch.where(header_end, positions, none).cummax(dim=1).values
    last_header_end = F.pad(last_header_end, (1, 0), value=-1)[:, :seq_len]  # strictly before p
    last_turn_start = torch.where(header_matches[0], positions, none).cummax(dim=1).values
    is_answer = last_header_end > last_turn_start
    guidance = ~image_mask & ~is_answer
    attended = _attended_tokens(attention_mask, seq_len)
    if attended is not None:
        guidance = guidance & attended
    return guidance


def _deprecated_image_hidden_states(output) -> torch.FloatTensor | None:
    """`image_hidden_states`: the name transformers' LLaVA deprecates and plans to reuse for another meaning."""
    warnings.warn(
        "`image_hidden_states` is deprecated and will be removed in transformers-parrot 0.2; use "
        "`moe_image_features` (the visual tokens after the MoE) or `image_outputs.pooler_output` (before it).",
        FutureWarning,
        stacklevel=2,
    )
    return output.moe_image_features


@dataclass
class ParrotModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    As transformers' `BaseModelOutputWithPast` (last_hidden_state, the KV cache, hidden_states, attentions), plus:

    image_outputs (`BaseModelOutputWithPooling`, *optional*): the image encoder's outputs, as transformers' VLMs
        return them: `get_image_features` (vision tower attentions / hidden states, `pooler_output` the projected
        visual tokens before the MoE).
    moe_image_features (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`, *optional*):
        Visual tokens after the projector and the MoE (the projector's output with `use_moe=False`), i.e. what
        replaced the `<image>` placeholders. `image_hidden_states` is a deprecated alias of it.
    router_logits (`torch.FloatTensor` of shape `(num_images, num_experts)`, *optional*):
        Pre-softmax gate logits of each image, in image order. Returned with `output_router_logits=True`.
    """

    image_outputs: BaseModelOutputWithPooling | None = None
    moe_image_features: torch.FloatTensor | None = None
    router_logits: torch.FloatTensor | None = None

    image_hidden_states = property(_deprecated_image_hidden_states)


@dataclass
class ParrotCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    As transformers' `CausalLMOutputWithPast` (loss, logits, the KV cache, hidden_states, attentions), plus:

    image_outputs (`BaseModelOutputWithPooling`, *optional*): the image encoder's outputs (see `ParrotModel`).
    moe_image_features (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`, *optional*):
        Visual tokens after the projector and the MoE (deprecated alias: `image_hidden_states`).
    router_logits (`torch.FloatTensor` of shape `(num_images, num_experts)`, *optional*): pre-softmax gate logits.
    """

    image_outputs: BaseModelOutputWithPooling | None = None
    moe_image_features: torch.FloatTensor | None = None
    router_logits: torch.FloatTensor | None = None

    image_hidden_states = property(_deprecated_image_hidden_states)


class ParrotMultiModalProjector(nn.Module):
    """The "mlp2x_gelu" projector: Linear(vision→D) → act → Linear(D→D)."""

    def __init__(self, config: ParrotConfig):
        super().__init__()
        text_hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, text_hidden, bias=config.multimodal_projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=config.multimodal_projector_bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N, L, vision_hidden) → (N, L, D)."""
        return self.linear_2(self.act(self.linear_1(image_features)))


class ParrotExperts(nn.Module):
    """E SwiGLU experts E_e(x) = W_down,e (silu(W_gate,e x) ⊙ W_up,e x), stored stacked as 3D weights.

    Both are stored (E, out, in), the orientation of `nn.Linear` and Mixtral, so each expert's original weights stack
    unchanged: `gate_up_proj` (E, 2I, D) (each expert's gate rows, then its up rows), `down_proj` (E, D, I). No biases.
    """

    def __init__(self, config: ParrotConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.hidden_dim = config.text_config.hidden_size
        self.intermediate_dim = config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, 2 * self.intermediate_dim, self.hidden_dim))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim, self.intermediate_dim))
        self.act_fn = nn.SiLU()

    def _weighted_swiglu(self, gate_up: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """w_e · silu(gate) ⊙ up: gate_up (N, L, k, 2I), weights (N, k) → (N, L, k, I)."""
        gate, up = gate_up.chunk(2, dim=-1)
        weights = weights[:, None, :, None].to(gate_up.dtype)
        if torch.is_grad_enabled() and gate_up.requires_grad:
            return self.act_fn(gate) * up * weights
        activated = self.act_fn(gate)  # inference: one new tensor, the products in place
        return activated.mul_(up).mul_(weights)

    def forward(self, hidden_states: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """Dense mixture Σ_e w_e E_e(x) as two matmuls over all experts at once.

        hidden_states (N, L, D), routing_weights (N, E) → (N, L, D).
        """
        num_images, seq_len, hidden = hidden_states.shape
        num_experts, inter = self.num_experts, self.intermediate_dim
        gate_up = F.linear(hidden_states, self.gate_up_proj.reshape(num_experts * 2 * inter, hidden))
        # Scaling before the down projection makes the mixture one contraction over (expert, intermediate):
        # Σ_e (w_e h_e) W_down,eᵀ = [w_1 h_1, ..., w_E h_E] [W_down,1, ..., W_down,E]ᵀ. The (D, E·I) matrix is one
        # copy of the weight (E·I·D values, ~1 % of the matmul's time at N·L = 4616 tokens).
        activated = self._weighted_swiglu(gate_up.view(num_images, seq_len, num_experts, 2 * inter), routing_weights)
        down = self.down_proj.permute(1, 0, 2).reshape(hidden, num_experts * inter)
        return F.linear(activated.reshape(num_images, seq_len, num_experts * inter), down)

    def forward_top_k(
        self, hidden_states: torch.Tensor, expert_index: torch.Tensor, routing_weights: torch.Tensor
    ) -> torch.Tensor:
        """Sparse mixture over each image's k chosen experts only.

        hidden_states (N, L, D), expert_index (N, k), routing_weights (N, k) → (N, L, D). Eagerly, one pair of
        matmuls per expert that some image chose, on that expert's weights in place (no weight copies); under
        `torch.compile`, `_top_k_batched` (static shapes: one graph).
        """
        if torch.compiler.is_compiling():
            return self._top_k_batched(hidden_states, expert_index, routing_weights)
        mixed = torch.zeros_like(hidden_states)
        for expert in expert_index.unique().tolist():
            image, slot = (expert_index == expert).nonzero(as_tuple=True)
            gate_up = F.linear(hidden_states[image], self.gate_up_proj[expert]).unsqueeze(2)  # (n, L, 1, 2I)
            activated = self._weighted_swiglu(gate_up, routing_weights[image, slot, None]).squeeze(2)
            mixed.index_add_(0, image, F.linear(activated, self.down_proj[expert]))
        return mixed

    def _top_k_batched(
        self, hidden_states: torch.Tensor, expert_index: torch.Tensor, routing_weights: torch.Tensor
    ) -> torch.Tensor:
        """`forward_top_k` as batched matmuls over each image's gathered expert weights (no data-dependent shape)."""
        num_images, seq_len, hidden = hidden_states.shape
        top_k, inter = expert_index.shape[1], self.intermediate_dim
        # Gathering whole (out, in) matrices copies contiguous blocks; the (N, D, k·I) view is free for k = 1.
        gate_up_weight = self.gate_up_proj[expert_index].view(num_images, top_k * 2 * inter, hidden)
        gate_up = torch.bmm(hidden_states, gate_up_weight.transpose(1, 2))
        activated = self._weighted_swiglu(gate_up.view(num_images, seq_len, top_k, 2 * inter), routing_weights)
        down = self.down_proj[expert_index].transpose(1, 2).reshape(num_images, hidden, top_k * inter)
        return torch.bmm(activated.reshape(num_images, seq_len, top_k * inter), down.transpose(1, 2))


class ParrotMultilingualMoE(nn.Module):
    """Parrot's text-guided MoE (paper §3.2).

    For every image: the CLS visual token queries the prompt's word embeddings (parameter-free cross-attention),
    the attended text vector goes through the gate, and the softmax weights mix the experts applied to all of the
    image's tokens, plus the residual `moe_residual_weight · X`. Routing is per image.
    """

    def __init__(self, config: ParrotConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.moe_top_k
        self.residual_weight = config.moe_residual_weight
        self.gate = nn.Linear(config.text_config.hidden_size, config.num_experts, bias=False)
        self.experts = ParrotExperts(config)

    @staticmethod
    def text_guidance(
        query: torch.Tensor, text_embeds: torch.Tensor, guidance_mask: torch.Tensor, image_to_sample: torch.Tensor
    ) -> torch.Tensor:
        """g = softmax(q Tᵀ / √D) T over each image's own guidance tokens.

        query (N, D), text_embeds (B, S, D), guidance_mask (B, S) bool, image_to_sample (N,) → (N, D).
        An image whose sample has no guidance token gets g = 0.
        """
        batch, seq_len, hidden = text_embeds.shape
        flat_text = text_embeds.reshape(batch * seq_len, hidden)
        scores = (query @ flat_text.T).float() / math.sqrt(hidden)  # (N, B*S)
        token_sample = torch.arange(batch, device=query.device).repeat_interleave(seq_len)
        allowed = guidance_mask.reshape(1, batch * seq_len) & (token_sample[None, :] == image_to_sample[:, None])
        scores = scores.masked_fill(~allowed, float("-inf"))
        attn = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows → 0
        return attn.to(flat_text.dtype) @ flat_text

    def forward(
        self,
        image_features: torch.Tensor,
        text_embeds: torch.Tensor,
        guidance_mask: torch.Tensor,
        image_to_sample: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_features (N, L, D), text_embeds (B, S, D), guidance_mask (B, S), image_to_sample (N,)
        → (mixed features (N, L, D), router logits (N, E))."""
        guidance = self.text_guidance(image_features[:, 0], text_embeds, guidance_mask, image_to_sample)
        router_logits = self.gate(guidance.to(self.gate.weight.dtype))
        routing_weights = torch.softmax(router_logits, dim=-1).to(image_features.dtype)
        if self.top_k is None or self.top_k == self.num_experts:
            mixed = self.experts(image_features, routing_weights)
        else:
            top_weights, top_index = routing_weights.topk(self.top_k, dim=-1)
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
            mixed = self.experts.forward_top_k(image_features, top_index, top_weights)
        return mixed + self.residual_weight * image_features, router_logits


def set_auto_map(config: ParrotConfig) -> None:
    """Add the `auto_map` entries of every Auto class Parrot supports to ``config``, so a folder saved with it
    loads with `trust_remote_code=True` through any of them (`save_pretrained` and the converter use this)."""
    module = ParrotModel.__module__.rsplit(".", 1)[-1]
    config.auto_map = {
        **(getattr(config, "auto_map", None) or {}),
        "AutoConfig": f"{type(config).__module__.rsplit('.', 1)[-1]}.ParrotConfig",
        "AutoModel": f"{module}.ParrotModel",
        "AutoModelForImageTextToText": f"{module}.ParrotForConditionalGeneration",
        "AutoModelForVision2Seq": f"{module}.ParrotForConditionalGeneration",
    }


UNQUANTIZED_MODULES = ("vision_tower", "multi_modal_projector", "moe")
"""Submodules of `ParrotModel` that quantized loading leaves in the compute dtype: the vision tower and projector
(as LLaVA-style models keep them) and the whole MoE (router and experts), so that a quantized model routes every
image as its checkpoint does. The LM head stays unquantized too: transformers never quantizes output embeddings."""


class ParrotPreTrainedModel(PreTrainedModel):
    config: ParrotConfig
    config_class = ParrotConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "Qwen2DecoderLayer", "ParrotMultilingualMoE"]
    _skip_keys_device_placement = [CACHE_KWARG]
    # Read by every transformers quantizer (bitsandbytes, torchao, ...) as the modules not to convert. Loading in
    # float16 (and, on transformers 4.x, with bitsandbytes) keeps them in float32: the forward runs the vision tower,
    # projector and MoE in their own dtype.
    _keep_in_fp32_modules = keep_in_fp32_modules(UNQUANTIZED_MODULES)
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @classmethod
    def from_pretrained(cls, *args, use_kernels: bool | None = None, **kwargs):
        """`PreTrainedModel.from_pretrained`; by default Hub kernels only where they can load: offline or without
        the `kernels` package the model loads without them (`_compat.use_kernels_kwargs`)."""
        return super().from_pretrained(*args, **use_kernels_kwargs(use_kernels), **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also write the `auto_map` entries of every Auto class Parrot supports (see `set_auto_map`)."""
        if self._auto_class is not None:
            set_auto_map(self.config)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def initialize_weights(self) -> None:
        """Initialise the vision tower and the LLM by their own library's rules first, then Parrot's modules.

        transformers treats Parrot as custom code, and its loading path then skips modules without parameters of
        their own (e.g. `CLIPAttention`, which sets its projections' std): weights missing from a checkpoint would
        get other values than at construction.
        """
        for module in self.modules():
            if isinstance(module, PreTrainedModel) and type(module).__module__.startswith("transformers."):
                module.initialize_weights()
        super().initialize_weights()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, ParrotExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, nn.Linear) and isinstance(module.weight, nn.Parameter):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            init_legacy_clip_embedding(module, std)
            super()._init_weights(module)


class ParrotModel(ParrotPreTrainedModel):
    """Vision tower → projector → multilingual MoE → placeholders of the LLM input → LLM (no LM head)."""

    def __init__(self, config: ParrotConfig):
        super().__init__(config)
        self.vision_tower = unwrap_clip_vision(AutoModel.from_config(config.vision_config))
        self.multi_modal_projector = ParrotMultiModalProjector(config)
        self.moe = ParrotMultilingualMoE(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Vision tower + projector, before the MoE.

        pixel_values (N, 3, H, W) → `pooler_output` (N, L, D) projected visual tokens; `last_hidden_state`,
        `attentions` and (when requested) `hidden_states` are the vision tower's. `return_dict=False` gives a tuple.
        """
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config.vision_config, "output_hidden_states", False)
        self._check_pixel_values(pixel_values)
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        vision_kwargs = {} if output_attentions is None else {"output_attentions": output_attentions}
        vision_outputs = self.vision_tower(
            pixel_values.to(self.multi_modal_projector.linear_1.weight.dtype),
            output_hidden_states=True,
            **vision_kwargs,
        )
        selected = vision_outputs.hidden_states[layer]
        if strategy == "default":
            selected = selected[:, 1:]
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=self.multi_modal_projector(selected),
            hidden_states=vision_outputs.hidden_states if output_hidden_states else None,
            attentions=vision_outputs.attentions,
        )

    def _multimodal_zero(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """A zero-valued scalar that depends on every vision-tower, projector and MoE parameter.

        Added to a text-only batch in distributed training, so every rank runs the same modules whatever its
        share of the batch holds: DDP without `find_unused_parameters` sees every parameter used, and FSDP /
        DeepSpeed ZeRO-3 ranks do not wait forever on an all-gather that a text-only rank never issues. Costs one
        blank image through the vision tower; numerically the loss is unchanged (the gradients it adds are 0).
        """
        blank = inputs_embeds.new_zeros(1, *self._pixel_shape())
        features = self.get_image_features(blank, return_dict=True).pooler_output.to(self._moe_dtype())
        if self.config.use_moe:
            features, _ = self.moe(
                features,
                features[:, :1],
                features.new_ones(1, 1, dtype=torch.bool),
                torch.zeros(1, dtype=torch.long, device=features.device),
            )
        return features.sum().to(inputs_embeds.dtype) * 0.0

    def _moe_dtype(self) -> torch.dtype:
        """The dtype the MoE runs in: its own weights' (float32 in a model loaded in float16, which keeps
        `_keep_in_fp32_modules` in float32), whatever the LLM's."""
        return self.moe.gate.weight.dtype

    def _pixel_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        size = self.config.vision_config.image_size
        return getattr(self.config.vision_config, "num_channels", 3), size, size

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        channels, size, _ = self._pixel_shape()
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"pixel_values must have shape (num_images, {channels}, {size}, {size}), got "
                f"{tuple(pixel_values.shape)}; use ParrotProcessor to preprocess images"
            )

    def _token_mask(self, token_id: int, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(B, S) bool: where the token is `token_id`, from ids or, for an embeds-only call, by embedding equality."""
        if input_ids is not None:
            return input_ids == token_id
        reference = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
        return (inputs_embeds == reference.to(inputs_embeds.dtype)).all(-1)

    def get_placeholder_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, num_images: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the `<image>` placeholders against the images and map each image to its sample.

        Returns the (B, S) placeholder mask and image_to_sample (N,), images in (batch, position) order.
        """
        image_mask = self._token_mask(self.config.image_token_id, input_ids, inputs_embeds)
        seq_per_image = self.config.image_seq_length
        per_sample = image_mask.sum(-1)
        n_tokens = int(per_sample.sum())
        if n_tokens != num_images * seq_per_image:
            raise ValueError(
                f"Image features and image tokens do not match: the input holds {n_tokens} image tokens but "
                f"pixel_values holds {num_images} image(s) of image_seq_length={seq_per_image} tokens "
                f"(expected {num_images * seq_per_image} tokens). Each `<image>` must be expanded by the processor."
            )
        bad = (per_sample % seq_per_image).nonzero()
        if bad.numel():
            sample = int(bad[0, 0])
            raise ValueError(
                f"Sample {sample} holds {int(per_sample[sample])} image tokens, not a multiple of "
                f"image_seq_length={seq_per_image}: an image was truncated or a placeholder was split."
            )
        image_starts = image_mask.nonzero()[::seq_per_image]  # (N, 2): (sample, position) of each image
        return image_mask, image_starts[:, 0]

    def get_guidance_mask(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_mask: torch.Tensor,
    ) -> torch.Tensor:
        """(B, S) bool: the prompt tokens that guide the router (see `guidance_mask`), from ids or, for an
        embeds-only call, by embedding equality."""
        matches = [
            self._token_mask(token_id, input_ids, inputs_embeds) for token_id in self.config.assistant_header_ids
        ]
        return guidance_mask(matches, image_mask, attention_mask)

    @can_return_tuple
    @accept_legacy_cache_kwarg
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> ParrotModelOutputWithPast:
        """input_ids (B, S) or inputs_embeds (B, S, D), pixel_values (N, 3, H, W) → last_hidden_state (B, S, D).

        Every other keyword argument (the KV cache under the installed transformers' name, `use_cache`,
        `output_attentions`, attention-backend arguments, extra batch keys from trainers) goes to the language model,
        as in transformers' LLaVA.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_outputs = image_features = router_logits = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values,
                output_attentions=kwargs.get("output_attentions"),
                output_hidden_states=kwargs.get("output_hidden_states"),
                return_dict=True,
            )
            image_features = image_outputs.pooler_output.to(inputs_embeds.device, self._moe_dtype())
            image_mask, image_to_sample = self.get_placeholder_mask(input_ids, inputs_embeds, image_features.shape[0])
            if self.config.use_moe:
                guidance_mask = self.get_guidance_mask(input_ids, inputs_embeds, attention_mask, image_mask)
                image_features, router_logits = self.moe(
                    image_features, inputs_embeds.to(image_features.dtype), guidance_mask, image_to_sample
                )
            image_features = image_features.to(inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features)
        else:
            cache = kwargs.get(CACHE_KWARG)
            if input_ids is not None and (cache is None or cache.get_seq_length() == 0):
                n_tokens = int((input_ids == self.config.image_token_id).sum())
                if n_tokens:
                    raise ValueError(
                        f"The input holds {n_tokens} image tokens but no pixel_values were given; pass the images "
                        "the processor expanded them for."
                    )
            if self.training and torch.is_grad_enabled() and _distributed_world_size() > 1:
                inputs_embeds = inputs_embeds + self._multimodal_zero(inputs_embeds)

        outputs = self.language_model(
            attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs
        )
        return ParrotModelOutputWithPast(
            **outputs,
            image_outputs=image_outputs,
            moe_image_features=image_features,
            router_logits=router_logits if output_router_logits else None,
        )


class ParrotForConditionalGeneration(ParrotPreTrainedModel, PixelValuesAtPrefillOnly, GenerationMixin):
    """Parrot with its LM head: image + multilingual prompt → text."""

    _tp_plan = {"lm_head": "colwise_gather_output"}
    _keep_in_fp32_modules = keep_in_fp32_modules(UNQUANTIZED_MODULES, prefix="model.")
    _tied_weights_keys = tied_weights_keys({"lm_head.weight": "model.language_model.embed_tokens.weight"})

    def __init__(self, config: ParrotConfig):
        super().__init__(config)
        self.model = ParrotModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling | tuple:
        """See [`ParrotModel.get_image_features`]: projected visual tokens before the MoE."""
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    @accept_legacy_cache_kwarg
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> ParrotCausalLMOutputWithPast:
        """As [`ParrotModel.forward`], plus `labels` (B, S) (-100 = ignored) for the next-token loss and
        `logits_to_keep` (keep only the last k positions' logits, or the given indices). Loss arguments
        (`num_items_in_batch`, `shift_labels`) reach the loss function."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])

        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return ParrotCausalLMOutputWithPast(
            loss=loss, logits=logits, **{key: value for key, value in outputs.items() if key != "last_hidden_state"}
        )


__all__ = ["ParrotPreTrainedModel", "ParrotModel", "ParrotForConditionalGeneration", "guidance_mask"]
