"""Training Parrot with TRL: model assembly, data, the paper's recipes (stage 1, stage 2 full/LoRA, MLAN, DPO) and
the steps the example scripts are made of.

Needs the `train` extra (trl, peft, accelerate, datasets). Names that need TRL (configs, trainers, script steps) are
imported on first use. See docs/training.md for the launch commands.
"""

from .builder import build_parrot_from_pretrained, merge_adapter_checkpoint, merge_lora, save_merged
from .data import (
    DataReport,
    ParrotDataError,
    convert_llava_sample,
    drop_images,
    load_llava_json,
    load_source,
    mix_datasets,
    normalize_conversational,
)
from .recipes import (
    STAGE_CONFIG,
    STAGE_LEARNING_RATE,
    RouterProbe,
    build_param_groups,
    check_max_length,
    check_text_only_samples,
    lora_config_for_parrot,
    setup_stage,
)

_LAZY = {
    "ParrotSFTTrainer": "recipes",
    "ParrotDPOTrainer": "recipes",
    "ParrotScriptArguments": "configs",
    "ParrotSFTConfig": "configs",
    "ParrotDPOConfig": "configs",
    "check_model_args": "scripts",
    "load_model_and_processor": "scripts",
    "prepare_stage": "scripts",
    "mlan_sources": "scripts",
    "load_training_data": "scripts",
    "load_preference_data": "scripts",
    "save_trained": "scripts",
    "train_sft": "scripts",
    "ParrotTrlParser": "inputs",
    "check_script_inputs": "inputs",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "build_parrot_from_pretrained",
    "merge_lora",
    "save_merged",
    "merge_adapter_checkpoint",
    "DataReport",
    "ParrotDataError",
    "convert_llava_sample",
    "drop_images",
    "load_llava_json",
    "load_source",
    "mix_datasets",
    "normalize_conversational",
    "STAGE_CONFIG",
    "STAGE_LEARNING_RATE",
    "RouterProbe",
    "build_param_groups",
    "check_max_length",
    "check_text_only_samples",
    "lora_config_for_parrot",
    "setup_stage",
    "ParrotSFTTrainer",
    "ParrotDPOTrainer",
    "ParrotScriptArguments",
    "ParrotSFTConfig",
    "ParrotDPOConfig",
    "check_model_args",
    "load_model_and_processor",
    "prepare_stage",
    "mlan_sources",
    "load_training_data",
    "load_preference_data",
    "save_trained",
    "train_sft",
    "ParrotTrlParser",
    "check_script_inputs",
]
