"""Inspect Parrot's routing: which experts the MoE mixes for a given image and prompt."""

from __future__ import annotations

import torch


@torch.no_grad()
def routing_weights(model, processor, images: list, questions: list[str]) -> torch.Tensor:
    """Softmax routing weights (len(questions), num_experts) of one image per question, as at generation.

    Each question is rendered with the processor's chat template (generation prompt), so the router sees
    exactly the prompt it sees when the model answers.
    """
    if len(images) != len(questions):
        raise ValueError(
            f"routing_weights needs one image per question, got {len(images)} images for {len(questions)} questions"
        )
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]
    batch = processor(
        text=texts, images=[[image] for image in images], padding=True, padding_side="left", return_tensors="pt"
    ).to(model.device)
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    logits = model(**batch, output_router_logits=True, logits_to_keep=1).router_logits
    if logits is None:
        raise ValueError("this model bypasses its MoE (config.use_moe=False): there is no routing to show")
    return logits.float().softmax(-1).cpu()


def format_routing(weights: torch.Tensor, labels: list[str]) -> str:
    """A small text table: one row per label, one column per expert."""
    header = "      " + " ".join(f"{'e' + str(e):>6}" for e in range(weights.shape[1]))
    rows = [f"{label:>5} " + " ".join(f"{w:6.3f}" for w in row.tolist()) for label, row in zip(labels, weights)]
    return "\n".join([header, *rows])
