"""pytest fixtures and hooks: the tiny tokenizer, processor and Parrot (helpers the tests import live in fixtures.py)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (it reads the variable once)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from fixtures import sharpen_routing  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "compat: also run on transformers 4.57.x (compatibility subset)")


@pytest.fixture(scope="module")
def tokenizer():
    """The bundled tiny multilingual byte-level BPE tokenizer (<image>, <|im_start|>, <|im_end|> are single tokens)."""
    from transformers import AutoTokenizer

    from transformers_parrot.assets import TINY_TOKENIZER_DIR

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def processor(tokenizer):
    """ParrotProcessor over the tiny tokenizer: 30 px pad-to-square images, 10 image tokens per image."""
    from transformers_parrot.models.parrot.image_processing_parrot import ParrotImageProcessor
    from transformers_parrot.models.parrot.processing_parrot import ParrotProcessor

    image_processor = ParrotImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return ParrotProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=10)


@pytest.fixture(scope="module")
def tiny():
    """(model, processor): the tiny Parrot in eval mode, fp32, sharpened routing."""
    from transformers_parrot.tiny import tiny_model

    model, processor = tiny_model(seed=0)
    sharpen_routing(model)
    return model.eval(), processor


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that run the demo or trainers may change torch's thread count; later tests compare bitwise results."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
