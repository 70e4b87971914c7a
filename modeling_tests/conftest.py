"""Shared fixtures: a tiny Parrot whose routing visibly depends on the prompt, images, prompts in six languages."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

QUESTIONS = {
    "en": "What colour is the circle?",
    "zh": "圆圈是什么颜色？",
    "pt": "De que cor é o círculo?",
    "ar": "ما لون الدائرة؟",
    "tr": "Dairenin rengi nedir?",
    "ru": "Какого цвета круг?",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "compat: also run on transformers 4.57.x (compatibility subset)")


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


@pytest.fixture(scope="module")
def tokenizer():
    """The bundled tiny multilingual byte-level BPE tokenizer (<image>, <|im_start|>, <|im_end|> are single tokens)."""
    from transformers import AutoTokenizer

    from transformers_parrot.assets import TINY_TOKENIZER_DIR

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def processor(tokenizer):
    """ParrotProcessor over the tiny tokenizer: 30 px pad-to-square images, 10 image tokens per image."""
    from transformers_parrot.image_processing_parrot import ParrotImageProcessor
    from transformers_parrot.processing_parrot import ParrotProcessor

    image_processor = ParrotImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return ParrotProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=10)


@pytest.fixture(scope="module")
def tiny():
    """(model, processor): the tiny Parrot in eval mode, fp32, sharpened routing."""
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0)
    sharpen_routing(model)
    return model.eval(), processor


def chat(question: str, answer: str | None = None, n_images: int = 1) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that run the demo or trainers may change torch's thread count; later tests compare bitwise results."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
