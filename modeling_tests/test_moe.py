"""The experts' batched matmuls against an independent implementation: same outputs and gradients in float64.

`reference_dense` / `reference_top_k` keep the straightforward formulation (one batched matmul per expert out of
the intermediate space, summed over experts; gathered transposed down matrices for top-k), written here so the
model's faster layout is checked against computation that shares none of its reshapes. Top-k is checked on both
of its paths: the eager loop over the experts chosen and the batched form `torch.compile` traces.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transformers_parrot import ParrotConfig
from transformers_parrot.models.parrot.modeling_parrot import ParrotExperts, ParrotMultilingualMoE

HIDDEN, INTER, EXPERTS = 12, 20, 5  # D != I, so a transposed weight cannot pass by accident


def reference_swiglu(gate_up: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """w_e · silu(gate) ⊙ up: gate_up (N, L, k, 2I), weights (N, k) → (N, L, k, I)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up * weights[:, None, :, None]


def reference_dense(experts: ParrotExperts, hidden_states: torch.Tensor, routing_weights: torch.Tensor):
    """Σ_e w_e E_e(x) with an (E, N·L, D) batched matmul summed over experts. (N, L, D), (N, E) → (N, L, D)."""
    num_images, seq_len, hidden = hidden_states.shape
    num_experts, inter = experts.num_experts, experts.intermediate_dim
    gate_up = F.linear(hidden_states, experts.gate_up_proj.reshape(num_experts * 2 * inter, hidden))
    activated = reference_swiglu(gate_up.view(num_images, seq_len, num_experts, 2 * inter), routing_weights)
    per_expert = activated.permute(2, 0, 1, 3).reshape(num_experts, num_images * seq_len, inter)
    return torch.bmm(per_expert, experts.down_proj.transpose(1, 2)).sum(0).view(num_images, seq_len, hidden)


def reference_top_k(experts: ParrotExperts, hidden_states, expert_index, routing_weights):
    """Σ over each image's k experts, down matrices gathered transposed. (N, L, D), (N, k), (N, k) → (N, L, D)."""
    num_images, seq_len, hidden = hidden_states.shape
    top_k, inter = expert_index.shape[1], experts.intermediate_dim
    gate_up_weight = experts.gate_up_proj[expert_index].reshape(num_images, top_k * 2 * inter, hidden)
    gate_up = torch.bmm(hidden_states, gate_up_weight.transpose(1, 2))
    activated = reference_swiglu(gate_up.view(num_images, seq_len, top_k, 2 * inter), routing_weights)
    down = experts.down_proj.transpose(1, 2)[expert_index].reshape(num_images, top_k * inter, hidden)
    return torch.bmm(activated.reshape(num_images, seq_len, top_k * inter), down)


def make_config(**overrides) -> ParrotConfig:
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 4,
        "patch_size": 2,
    }
    text = {
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 32,
    }
    return ParrotConfig(
        vision_config=vision,
        text_config=text,
        num_experts=EXPERTS,
        moe_intermediate_size=INTER,
        image_token_id=31,
        assistant_header_ids=[28, 29, 30],
        **overrides,
    )


def make_experts(seed: int = 0) -> ParrotExperts:
    experts = ParrotExperts(make_config()).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in (experts.gate_up_proj, experts.down_proj):
            weight.copy_(torch.randn(weight.shape, generator=generator, dtype=torch.float64) * 0.5)
    return experts


def make_inputs(num_images: int = 3, seq_len: int = 7, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(num_images, seq_len, HIDDEN, generator=generator, dtype=torch.float64)
    routing_weights = torch.softmax(torch.randn(num_images, EXPERTS, generator=generator, dtype=torch.float64), -1)
    return hidden_states, routing_weights


def outputs_and_grads(fn, experts: ParrotExperts, inputs: list[torch.Tensor]):
    """fn(*inputs) and the gradients of a random projection of it w.r.t. the inputs and both stacked weights."""
    experts.zero_grad(set_to_none=True)
    inputs = [tensor.detach().clone().requires_grad_(tensor.is_floating_point()) for tensor in inputs]
    out = fn(*inputs)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    (out * probe).sum().backward()
    grads = [tensor.grad for tensor in inputs if tensor.requires_grad]
    return out.detach(), grads + [experts.gate_up_proj.grad.clone(), experts.down_proj.grad.clone()]


def test_dense_mixture_matches_reference_outputs_and_gradients():
    experts = make_experts()
    hidden_states, routing_weights = make_inputs()
    out, grads = outputs_and_grads(experts, experts, [hidden_states, routing_weights])
    ref_out, ref_grads = outputs_and_grads(
        lambda x, w: reference_dense(experts, x, w), experts, [hidden_states, routing_weights]
    )
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(ref_grads) == 4
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_dense_mixture_is_the_per_expert_sum():
    """Independent of both batched formulations: a Python loop over experts and images."""
    experts = make_experts(seed=2)
    hidden_states, routing_weights = make_inputs(num_images=2, seq_len=4, seed=3)
    expected = torch.zeros_like(hidden_states)
    for n in range(hidden_states.shape[0]):
        for e in range(EXPERTS):
            w_gate, w_up = experts.gate_up_proj[e, :INTER], experts.gate_up_proj[e, INTER:]
            x = hidden_states[n]
            expected[n] += routing_weights[n, e] * (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ experts.down_proj[e].T
    with torch.no_grad():
        torch.testing.assert_close(experts(hidden_states, routing_weights), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["forward_top_k", "_top_k_batched"])  # eager loop over experts / compiled graph
@pytest.mark.parametrize("top_k", [1, 2, EXPERTS - 1])
def test_top_k_matches_reference_outputs_and_gradients(top_k, path):
    experts = make_experts(seed=top_k)
    hidden_states, routing_weights = make_inputs(num_images=6, seed=10 + top_k)
    top_weights, top_index = routing_weights.topk(top_k, dim=-1)
    top_weights = top_weights / top_weights.sum(-1, keepdim=True)
    if top_k == 1:  # two images share an expert, one expert is chosen by none
        top_index = torch.tensor([[0], [3], [0], [1], [4], [1]])
    method = getattr(experts, path)
    out, grads = outputs_and_grads(lambda x, w: method(x, top_index, w), experts, [hidden_states, top_weights])
    ref_out, ref_grads = outputs_and_grads(
        lambda x, w: reference_top_k(experts, x, top_index, w), experts, [hidden_states, top_weights]
    )
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["forward_top_k", "_top_k_batched"])
def test_top_k_with_every_expert_equals_the_dense_mixture(path):
    experts = make_experts(seed=4)
    hidden_states, routing_weights = make_inputs(seed=5)
    every = torch.arange(EXPERTS).flip(0).expand(hidden_states.shape[0], EXPERTS)
    with torch.no_grad():
        torch.testing.assert_close(
            getattr(experts, path)(hidden_states, every, routing_weights.flip(1)),
            experts(hidden_states, routing_weights),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("top_k", [None, 1, 3])
def test_inference_path_equals_the_autograd_path(top_k):
    """Without autograd the SwiGLU products run in place; the values must not change."""
    moe = ParrotMultilingualMoE(make_config(moe_top_k=top_k)).double()
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for parameter in moe.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    features = torch.randn(3, 7, HIDDEN, generator=generator, dtype=torch.float64)
    text = torch.randn(2, 5, HIDDEN, generator=generator, dtype=torch.float64)
    guidance = torch.rand(2, 5, generator=generator) > 0.3
    image_to_sample = torch.tensor([0, 0, 1])
    train_out, train_logits = moe(features.requires_grad_(), text, guidance, image_to_sample)
    with torch.inference_mode():
        infer_out, infer_logits = moe(features.detach(), text, guidance, image_to_sample)
    torch.testing.assert_close(infer_out, train_out.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(infer_logits, train_logits.detach(), rtol=1e-12, atol=1e-12)
