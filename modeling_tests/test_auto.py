"""Importing the package registers Parrot with the Auto classes of the installed transformers."""

from __future__ import annotations

import pytest
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from transformers_parrot import ParrotConfig, ParrotForConditionalGeneration, ParrotModel, ParrotProcessor
from transformers_parrot.tiny import tiny_config


@pytest.mark.compat
def test_auto_classes_resolve_to_parrot(tmp_path, tiny):
    model, processor = tiny
    assert isinstance(AutoConfig.for_model("parrot"), ParrotConfig)
    config = tiny_config()
    assert type(AutoModel.from_config(config)) is ParrotModel
    assert type(AutoModelForImageTextToText.from_config(config)) is ParrotForConditionalGeneration
    if hasattr(transformers, "AutoModelForVision2Seq"):  # transformers 4.x
        assert type(transformers.AutoModelForVision2Seq.from_config(config)) is ParrotForConditionalGeneration
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is ParrotConfig
    assert type(AutoProcessor.from_pretrained(tmp_path)) is ParrotProcessor
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded) is ParrotForConditionalGeneration
    assert loaded.base_model_prefix == "model" and loaded.base_model is loaded.model
    assert type(AutoModel.from_pretrained(tmp_path)) is ParrotModel
