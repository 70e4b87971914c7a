"""Command-line recipes behind examples/train_sft.py, train_mlan.py and train_dpo.py.

Each reads TRL's own argument classes (`SFTConfig`/`DPOConfig`, `ModelConfig`) through `TrlParser` plus Parrot's
`ParrotScriptArguments`, so every TRL/transformers flag works (also from `--config recipe.yaml`). Defaults that the
user did not set on the command line follow the paper (`recipes.paper_defaults`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field

from .recipes import lora_config_for_parrot, paper_defaults

logger = logging.getLogger(__name__)


@dataclass
class ParrotScriptArguments:
    """Parrot-specific arguments of the training scripts."""

    stage: int = field(default=2, metadata={"help": "1: align (projector only, MoE off); 2: instruction tuning."})
    vision_model: str | None = field(default=None, metadata={
        "help": "Build a fresh Parrot from this CLIP vision checkpoint (with --llm_model) instead of loading "
                "--model_name_or_path."})
    llm_model: str | None = field(default=None, metadata={"help": "Qwen2 chat LLM checkpoint for a fresh Parrot."})
    datasets: list[str] = field(default_factory=list, metadata={
        "help": "Data sources: LLaVA JSON/JSONL files, local data files, or Hub ids (name or name:config)."})
    dataset_ratios: list[float] | None = field(default=None, metadata={
        "help": "Sampling ratio per source (default: equal)."})
    image_folders: list[str] | None = field(default=None, metadata={
        "help": "Image folder per LLaVA JSON source (one for all, or one per source)."})
    dataset_split: str = field(default="train")
    streaming: bool = field(default=False, metadata={"help": "Stream sources (needs --max_steps)."})
    on_bad_sample: str = field(default="raise", metadata={
        "help": "'raise': stop at the first bad sample (missing/unreadable image, unknown role, empty conversation, "
                "<image> count != images) with an error naming it; 'skip': drop it and count it.",
        "choices": ["raise", "skip"]})
    check_images: bool = field(default=True, metadata={"help": "Open every image while loading the data."})
    multimodal_lr: float | None = field(default=None, metadata={
        "help": "Separate learning rate for projector + MoE (default: --learning_rate)."})
    train_vision: bool = field(default=False, metadata={"help": "Also train the vision tower (not in the paper)."})
    max_images_per_sample: int = field(default=1, metadata={
        "help": "Most images in one sample: --max_length must hold them all (image tokens are never truncated)."})
    merge_lora: bool = field(default=True, metadata={
        "help": "With --use_peft, also save a merged plain checkpoint to <output_dir>/merged."})
    # MLAN (train_mlan.py)
    text_datasets: list[str] = field(default_factory=list, metadata={"help": "MLAN: language-only sources."})
    visual_datasets: list[str] = field(default_factory=list, metadata={"help": "MLAN: visual sources to mix in."})
    visual_ratio: float = field(default=0.0, metadata={
        "help": "MLAN: share of visual samples (0 = text only); they share batches with the text samples."})


# a default is not applied when the user set it under its older name either
_OLDER_NAMES = {"activation_checkpointing": "gradient_checkpointing"}


def _cli_sets(argv: list[str], name: str) -> bool:
    names = {name, _OLDER_NAMES.get(name, name)}
    return any(a == f"--{n}" or a.startswith(f"--{n}=") for a in argv for n in names)


def _apply_defaults(argv, defaults: dict, config_names: set) -> list[str]:
    """Prepend paper defaults for the fields the command line (or a --config file) does not set."""
    out = []
    config_file = None
    if "--config" in argv:
        config_file = argv[argv.index("--config") + 1]
    from_file = set()
    if config_file:
        import yaml

        with open(config_file, encoding="utf-8") as handle:
            from_file = set((yaml.safe_load(handle) or {}).keys())
    for key, value in defaults.items():
        if key in config_names and not _cli_sets(argv, key) and not {key, _OLDER_NAMES.get(key)} & from_file:
            if isinstance(value, bool):
                out += [f"--{key}", str(value)]
            else:
                out += [f"--{key}", str(value)]
    return out + list(argv)


def _parse(config_cls, argv, stage_default: int = 2):
    import dataclasses

    from trl import ModelConfig, TrlParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage", type=int, default=stage_default)
    known, _ = pre.parse_known_args(argv)
    defaults = paper_defaults(known.stage)
    if not defaults["bf16"]:
        defaults["use_cpu"] = not _has_accelerator()
    names = {f.name for f in dataclasses.fields(config_cls)}
    argv = _apply_defaults(argv, defaults, names)
    parser = TrlParser((ParrotScriptArguments, config_cls, ModelConfig))
    return parser.parse_args_and_config(args=argv)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def load_model_and_processor(script_args, model_args, stage: int):
    """Fresh model from parts (--vision_model + --llm_model) or a Parrot checkpoint (--model_name_or_path)."""
    import torch

    from .. import ParrotForConditionalGeneration, ParrotProcessor
    from .builder import build_parrot_from_pretrained

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if script_args.vision_model or script_args.llm_model:
        if not (script_args.vision_model and script_args.llm_model):
            raise ValueError("--vision_model and --llm_model go together")
        model, processor = build_parrot_from_pretrained(script_args.vision_model, script_args.llm_model,
                                                        dtype=dtype)
    elif model_args.model_name_or_path:
        kwargs = {"dtype": dtype, "revision": model_args.model_revision}
        if model_args.attn_implementation:
            kwargs["attn_implementation"] = model_args.attn_implementation
        model = ParrotForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **kwargs)
        processor = ParrotProcessor.from_pretrained(model_args.model_name_or_path)
    else:
        raise ValueError("pass --model_name_or_path (a Parrot checkpoint) or --vision_model and --llm_model")
    return model, processor


def _folders(script_args, n: int) -> list[str | None]:
    folders = script_args.image_folders or [None]
    if len(folders) == 1:
        return folders * n
    if len(folders) != n:
        raise ValueError(f"--image_folders: give one folder or one per source ({n}), got {len(folders)}")
    return folders


def load_training_data(script_args, sources: list[str], ratios=None, seed: int = 0, drop_all_images=False):
    from .data import DataReport, drop_images, load_source, mix_datasets

    report = DataReport()
    datasets = []
    for source, folder in zip(sources, _folders(script_args, len(sources))):
        dataset = load_source(source, image_folder=folder, split=script_args.dataset_split,
                              on_error=script_args.on_bad_sample, check_images=script_args.check_images,
                              streaming=script_args.streaming, report=report)
        datasets.append(drop_images(dataset) if drop_all_images else dataset)
    mixed = mix_datasets(datasets, ratios, seed=seed)
    if not script_args.streaming:
        logger.info("training data: %s", report.summary())
    return mixed, report


def sft_main(argv: list[str] | None = None, mlan: bool = False, before_train=None):
    """Stage 1 / stage 2 (full or LoRA) / MLAN supervised fine-tuning; returns the trainer after training.

    `before_train(trainer)` runs just before training (attach callbacks, probes, ...)."""
    from trl import SFTConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args, model_args = _parse(SFTConfig, argv)
    return train_sft(script_args, training_args, model_args, mlan=mlan, before_train=before_train)


def train_sft(script_args: ParrotScriptArguments, training_args, model_args=None, *, mlan: bool = False,
              model=None, processor=None, before_train=None):
    """`sft_main` from dataclasses instead of argv: `training_args` is a `trl.SFTConfig` used as given (the paper
    defaults of the command line are not applied), `model_args` a `trl.ModelConfig` (default: full fine-tuning).
    `model` + `processor` train an in-memory Parrot instead of loading `model_args.model_name_or_path`.
    Returns the trainer after training and saving to `training_args.output_dir`."""
    from trl import ModelConfig

    from .recipes import ParrotSFTTrainer, check_max_length, setup_stage

    model_args = model_args or ModelConfig()
    stage = 2 if mlan else script_args.stage
    if (model is None) != (processor is None):
        raise ValueError("pass model and processor together (or neither, to load model_args.model_name_or_path)")
    if model is None:
        model, processor = load_model_and_processor(script_args, model_args, stage)

    if mlan:
        if not script_args.text_datasets:
            raise ValueError("MLAN needs --text_datasets")
        sources = list(script_args.text_datasets)
        ratios = [1.0 - script_args.visual_ratio] * len(sources)
        ratios = [r / len(sources) for r in ratios]
        if script_args.visual_ratio > 0:
            if not script_args.visual_datasets:
                raise ValueError("--visual_ratio > 0 needs --visual_datasets")
            n = len(script_args.visual_datasets)
            sources += script_args.visual_datasets
            ratios += [script_args.visual_ratio / n] * n
        train_dataset, report = load_training_data(script_args, sources, ratios, seed=training_args.seed)
    else:
        if not script_args.datasets:
            raise ValueError("pass --datasets")
        train_dataset, report = load_training_data(script_args, script_args.datasets, script_args.dataset_ratios,
                                                   seed=training_args.seed)

    check_max_length(training_args.max_length, processor.image_seq_length, script_args.max_images_per_sample)
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    if training_args.packing or training_args.padding_free:
        raise ValueError("packing and padding-free batches do not work with images; leave them off")

    peft_config = None
    if model_args.use_peft:
        if stage == 1:
            raise ValueError("stage 1 trains only the projector; --use_peft is for stage 2")
        setup_stage(model, stage, train_vision=False)
        peft_config = lora_config_for_parrot(model_args)
    else:
        counts = setup_stage(model, stage, train_vision=script_args.train_vision)
        logger.info("stage %d: %d / %d parameters train", stage, counts["trainable"], counts["total"])

    trainer = ParrotSFTTrainer(
        model=model, args=training_args, train_dataset=train_dataset, processing_class=processor,
        peft_config=peft_config, multimodal_lr=script_args.multimodal_lr,
    )
    trainer.parrot_data_report = report
    _train_and_save(trainer, processor, training_args, model_args, script_args, before_train)
    logger.info("training data: %s", report.summary())
    return trainer


def dpo_main(argv: list[str] | None = None, before_train=None):
    """DPO on image-grounded preference pairs (prompt with image, chosen, rejected); full (explicit frozen
    reference copy) or LoRA (reference = adapters disabled). Returns the trainer after training."""
    import copy

    from trl import DPOConfig

    from .recipes import ParrotDPOTrainer, check_max_length, setup_stage

    argv = list(sys.argv[1:] if argv is None else argv)
    if not _cli_sets(argv, "learning_rate"):
        argv = ["--learning_rate", "5e-7"] + argv  # DPO: a small LR, as usual for preference tuning
    script_args, training_args, model_args = _parse(DPOConfig, argv)
    model, processor = load_model_and_processor(script_args, model_args, 2)
    if not script_args.datasets:
        raise ValueError("pass --datasets (preference data: prompt, chosen, rejected, images)")
    train_dataset = load_preference_data(script_args)
    check_max_length(training_args.max_length, processor.image_seq_length, script_args.max_images_per_sample)
    training_args.remove_unused_columns = False

    peft_config, ref_model = None, None
    setup_stage(model, 2, train_vision=script_args.train_vision and not model_args.use_peft)
    if model_args.use_peft:
        peft_config = lora_config_for_parrot(model_args)
    else:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = ParrotDPOTrainer(
        model=model, ref_model=ref_model, args=training_args, train_dataset=train_dataset,
        processing_class=processor, peft_config=peft_config, multimodal_lr=script_args.multimodal_lr,
    )
    _train_and_save(trainer, processor, training_args, model_args, script_args, before_train)
    return trainer


def _train_and_save(trainer, processor, training_args, model_args, script_args, before_train) -> None:
    """Train (resuming when asked), save model + processor, and merge LoRA adapters into `merged/` if asked."""
    from .builder import save_merged

    if before_train is not None:
        before_train(trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
        if model_args.use_peft and script_args.merge_lora:
            save_merged(trainer.accelerator.unwrap_model(trainer.model), processor,
                        os.path.join(training_args.output_dir, "merged"))


def load_preference_data(script_args):
    """Preference sources (JSON/JSONL/Hub) with `prompt`, `chosen`, `rejected` and `images`/`image` (paths relative
    to the image folder or decoded images), validated by `data.normalize_preference`."""
    from datasets import load_dataset

    from .data import mix_datasets, normalize_preference

    datasets = []
    for source, folder in zip(script_args.datasets, _folders(script_args, len(script_args.datasets))):
        if os.path.isfile(source):
            extension = source.rsplit(".", 1)[-1]
            raw = load_dataset({"jsonl": "json"}.get(extension, extension), data_files=source,
                               split=script_args.dataset_split)
        else:
            name, _, config = source.partition(":")
            raw = load_dataset(name, config or None, split=script_args.dataset_split)
        datasets.append(normalize_preference(raw, image_folder=folder, on_error=script_args.on_bad_sample,
                                             check_images=script_args.check_images, source=source))
    return mix_datasets(datasets, script_args.dataset_ratios)


__all__ = ["ParrotScriptArguments", "sft_main", "train_sft", "dpo_main", "load_model_and_processor", "load_training_data"]
