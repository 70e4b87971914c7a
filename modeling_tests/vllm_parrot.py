"""Helpers of the vLLM tests: a tiny Parrot vLLM's CPU attention accepts, and the transformers reference outputs.

Not a test module: `test_vllm*.py` import it. It imports vLLM nowhere, so the reference side also runs without vLLM.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fixtures import chat, sharpen_routing

# vLLM's CPU attention takes LLM head sizes 32, 64, 80, 96, 112, 128 and more: hidden 64 with 2 heads.
TINY_VLLM_TEXT_CONFIG = {
    "hidden_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}
# LLM matrices and experts drawn with this std instead of 0.02, so that the visual tokens, hence the routing, move
# the outputs: with another prompt's routing the greedy tokens change and log-probs move by about 0.1 (at 0.02 the
# tiny LLM nearly ignores the image: 1e-6). The router and projector keep the conftest scale, where the routing
# visibly depends on the prompt.
SENSITIVE_STD = 0.2
MAX_NEW_TOKENS = 8
LOGPROB_TOLERANCE = 1e-3


def save_tiny_parrot(directory: Path, **overrides):
    """Save a tiny random Parrot (sharpened routing, float32) and its processor to `directory`; return both."""
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0, text_config=TINY_VLLM_TEXT_CONFIG, **overrides)
    sharpen_routing(model)
    generator = torch.Generator().manual_seed(7)
    experts = model.model.moe.experts
    llm_matrices = [
        weight
        for name, weight in model.model.language_model.named_parameters()
        if weight.ndim == 2 and "embed" not in name
    ]
    with torch.no_grad():
        for weight in [*llm_matrices, experts.gate_up_proj, experts.down_proj]:
            weight.copy_(torch.randn(weight.shape, generator=generator) * SENSITIVE_STD)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model.eval(), processor


def chat_prompt(processor, question: str, n_images: int = 1) -> str:
    """The rendered ChatML prompt (generation header included) with `n_images` `<image>` placeholders."""
    return processor.apply_chat_template(chat(question, n_images=n_images), add_generation_prompt=True, tokenize=False)


@torch.no_grad()
def hf_greedy(
    model,
    processor,
    prompt: str,
    images: list | None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    routing_prompt: str | None = None,
):
    """Greedy transformers `generate` on one prompt: (prompt ids, new token ids, log-prob of each new token).

    `routing_prompt`: route the images as this other prompt routes them (what a cache keyed by the image alone
    would serve), instead of by `prompt`.
    """
    if routing_prompt is not None:
        logits = {}
        hook = model.model.moe.gate.register_forward_hook(lambda module, args, out: logits.setdefault("gate", out))
        try:
            hf_greedy(model, processor, routing_prompt, images, max_new_tokens=1)
        finally:
            hook.remove()
        hook = model.model.moe.gate.register_forward_hook(lambda module, args, out: logits["gate"])
        try:
            return hf_greedy(model, processor, prompt, images, max_new_tokens)
        finally:
            hook.remove()
    batch = processor(text=[prompt], images=[images] if images else None, return_tensors="pt")
    out = model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    prompt_ids = batch["input_ids"][0].tolist()
    new_ids = out.sequences[0, len(prompt_ids) :].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[token].item() for step, token in zip(out.logits, new_ids)]
    return prompt_ids, new_ids, logprobs


def assert_same_greedy(vllm_output, reference, what: str = "") -> None:
    """A vLLM `RequestOutput` (greedy, logprobs=1) gives the reference's prompt, tokens and log-probs."""
    prompt_ids, new_ids, logprobs = reference
    completion = vllm_output.outputs[0]
    assert list(vllm_output.prompt_token_ids) == prompt_ids, f"{what}: prompt token ids differ"
    assert list(completion.token_ids) == new_ids, f"{what}: greedy tokens differ"
    got = [step[token].logprob for step, token in zip(completion.logprobs, new_ids)]
    diff = max(abs(a - b) for a, b in zip(got, logprobs))
    assert diff < LOGPROB_TOLERANCE, f"{what}: |Δ log-prob| = {diff:.2e}"
