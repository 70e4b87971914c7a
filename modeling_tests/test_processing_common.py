"""transformers' own processor tests (ProcessorTesterMixin) run on ParrotProcessor, as for LLaVA.

The suite comes from the transformers sdist of the installed version (`fetch_transformers_tests.py`, fetched on
first use and cached in `.hf_tests/`); offline and never fetched, this module is skipped (but fails under CI=true).
The processor is built from the bundled tiny byte-level BPE tokenizer and a small `ParrotImageProcessor` (LLaVA's
pad-to-square). The suite's Hub fixture images are replaced by one local image (see the fetch script).
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_transformers_tests import use_suite_or_skip  # noqa: E402

use_suite_or_skip()

from hf_tests.test_processing_common import ProcessorTesterMixin  # noqa: E402

from transformers_parrot.assets import TINY_TOKENIZER_DIR  # noqa: E402
from transformers_parrot.models.parrot.image_processing_parrot import ParrotImageProcessor  # noqa: E402
from transformers_parrot.models.parrot.processing_parrot import ParrotProcessor  # noqa: E402

SIDE = 30  # image side after preprocessing


class ParrotProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = ParrotProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return transformers.AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)

    @classmethod
    def _setup_image_processor(cls):
        return ParrotImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})

    @staticmethod
    def prepare_processor_dict():
        return {"image_seq_length": 10}  # short enough for the suite's max_length values (76 to 117)
