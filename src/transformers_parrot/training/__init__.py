"""Training Parrot with TRL: model assembly, data, and the paper's recipes (stage 1, stage 2 full/LoRA, MLAN, DPO).

Needs the `train` extra (trl, peft, accelerate, datasets). See examples/README.md for the launch commands.
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
    PAPER_DEFAULTS,
    STAGE_LEARNING_RATE,
    RouterProbe,
    build_param_groups,
    check_max_length,
    lora_config_for_parrot,
    paper_defaults,
    setup_stage,
)


def __getattr__(name):
    if name in ("ParrotSFTTrainer", "ParrotDPOTrainer"):
        from . import recipes

        return getattr(recipes, name)
    raise AttributeError(name)


__all__ = [
    "build_parrot_from_pretrained", "merge_lora", "save_merged", "merge_adapter_checkpoint",
    "DataReport", "ParrotDataError", "convert_llava_sample", "drop_images", "load_llava_json", "load_source",
    "mix_datasets", "normalize_conversational",
    "PAPER_DEFAULTS", "STAGE_LEARNING_RATE", "RouterProbe", "build_param_groups", "check_max_length",
    "lora_config_for_parrot", "paper_defaults", "setup_stage", "ParrotSFTTrainer", "ParrotDPOTrainer",
]
