"""Test helpers the tests import (`from fixtures import ...`): deterministic images, chat turns, a question in six
languages, and routing weights that depend visibly on the prompt."""

from __future__ import annotations

import torch

from transformers_parrot.languages import example_questions

QUESTIONS = example_questions()  # {language: question}: one question in the six languages


def make_image(seed: int = 0, size: tuple[int, int] = (40, 28)):
    """A deterministic RGB test image."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def sharpen_routing(model) -> None:
    """Give embeddings and the router unit-scale weights so the CLS query attends sharply and the routing weights
    depend visibly on which tokens guide them (with the default 0.02 init every prompt routes almost uniformly)."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed.copy_(torch.randn(embed.shape, generator=generator))
        gate = model.model.moe.gate.weight
        gate.copy_(torch.randn(gate.shape, generator=generator))
        projector = model.model.multi_modal_projector.linear_2.weight
        projector.copy_(torch.randn(projector.shape, generator=generator) * 0.3)


def chat(question: str, answer: str | None = None, n_images: int = 1) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
