"""transformers' own common model tests (ModelTesterMixin, ConfigTester) run on Parrot, as for LLaVA.

The suite comes from the transformers sdist of the installed version (`fetch_transformers_tests.py`, fetched on
first use and cached in `.hf_tests/`); offline and never fetched, this module is skipped (but fails under CI=true).
"""

from __future__ import annotations

import sys
import unittest
import unittest.mock
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_transformers_tests import use_suite_or_skip  # noqa: E402

use_suite_or_skip()

from hf_tests import test_modeling_common as common  # noqa: E402
from hf_tests.test_configuration_common import ConfigTester  # noqa: E402
from hf_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402
from transformers.models.auto.modeling_auto import (  # noqa: E402
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from transformers_parrot import ParrotConfig, ParrotForConditionalGeneration, ParrotModel  # noqa: E402

# The suite recognises base and image-text-to-text classes by the library's static name tables; list Parrot there
# as an in-library model would be (the runtime registration of `transformers_parrot` does not touch them).
MODEL_MAPPING_NAMES.setdefault("parrot", "ParrotModel")
MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.setdefault("parrot", "ParrotForConditionalGeneration")


class ParrotModelTester:
    def __init__(self, parent, batch_size: int = 7, text_seq_length: int = 7, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        self.image_token_id = 0
        self.pad_token_id = 1
        self.assistant_header_ids = [2, 3, 4]
        self.text_config = {
            "model_type": "qwen2",
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": 5,
            "eos_token_id": 6,
        }
        self.vision_config = {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 8,
            "patch_size": 4,
            "num_channels": 3,
            "projection_dim": 32,
        }
        self.image_size = self.vision_config["image_size"]
        self.patch_size = self.vision_config["patch_size"]
        self.image_seq_length = (self.image_size // self.patch_size) ** 2 + 1  # CLS kept
        self.seq_length = text_seq_length + self.image_seq_length
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.hidden_size = self.text_config["hidden_size"]
        self.vocab_size = self.text_config["vocab_size"]

    def get_config(self) -> ParrotConfig:
        return ParrotConfig(
            text_config=self.text_config,
            vision_config=self.vision_config,
            image_token_id=self.image_token_id,
            assistant_header_ids=self.assistant_header_ids,
            vision_feature_layer=-1,  # as LLaVA's tester: every vision layer then receives gradients
            num_experts=3,
            moe_intermediate_size=24,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 10) + 10  # no special ids
        input_ids[:, : self.image_seq_length] = self.image_token_id
        attention_mask = torch.ones_like(input_ids)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


class ParrotCommonModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (ParrotModel, ParrotForConditionalGeneration)
    _is_composite = True
    test_torch_exportable = False
    additional_model_inputs = ["pixel_values"]
    # CLIP's post_layernorm only feeds the pooled CLS output, which Parrot (like LLaVA) never uses.
    test_all_params_have_gradient = False

    def setUp(self):
        self.model_tester = ParrotModelTester(self)
        self.config_tester = ConfigTester(self, config_class=ParrotConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()

    # The rope-scaling tests feed random ids over the whole vocabulary without images; Parrot rejects `<image>`
    # tokens that have no pixel_values (a clear error instead of silently embedding a placeholder), so draw the
    # random text from the non-special ids.
    def _text_only_ids(self, test):
        def text_ids(shape, vocab_size, **kwargs):
            return ids_tensor(shape, vocab_size - 10, **kwargs) + 10

        with unittest.mock.patch.object(common, "ids_tensor", text_ids):
            test()

    def test_model_rope_scaling_from_config_0_linear(self):
        self._text_only_ids(super().test_model_rope_scaling_from_config_0_linear)

    def test_model_rope_scaling_from_config_1_dynamic(self):
        self._text_only_ids(super().test_model_rope_scaling_from_config_1_dynamic)

    def test_model_rope_scaling_from_config_2_yarn(self):
        self._text_only_ids(super().test_model_rope_scaling_from_config_2_yarn)

    @unittest.skip(
        "GenerationTesterMixin is not shipped in the transformers sdist; test_generation.py covers generate"
    )
    def test_generation_tester_mixin_inheritance(self):
        pass
