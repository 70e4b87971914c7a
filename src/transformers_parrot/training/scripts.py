"""The steps examples/train_sft.py, train_mlan.py and train_dpo.py are made of, each taking the scripts' dataclasses
(`configs.ParrotScriptArguments`, `ParrotSFTConfig` / `ParrotDPOConfig`, `trl.ModelConfig`): load the model, set it
up for the stage, load and mix the data, save what was trained. `train_sft` runs the SFT script's steps in one call
(for programs that hold the dataclasses already, such as `parrot-demo`)."""

from __future__ import annotations

import os

from transformers.utils import logging

from .configs import ParrotScriptArguments
from .data import DataReport
from .recipes import STAGE_LEARNING_RATE, lora_config_for_parrot, setup_stage

logger = logging.get_logger(__name__)


def load_model_and_processor(script_args: ParrotScriptArguments, model_args):
    """Fresh model from parts (--vision_model + --llm_model) or a Parrot checkpoint (--model_name_or_path)."""
    import torch

    from .. import ParrotForConditionalGeneration, ParrotProcessor
    from .builder import build_parrot_from_pretrained

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if script_args.vision_model or script_args.llm_model:
        if not (script_args.vision_model and script_args.llm_model):
            raise ValueError("--vision_model and --llm_model go together")
        return build_parrot_from_pretrained(script_args.vision_model, script_args.llm_model, dtype=dtype)
    if not model_args.model_name_or_path:
        raise ValueError("pass --model_name_or_path (a Parrot checkpoint) or --vision_model and --llm_model")
    kwargs = {"dtype": dtype, "revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = ParrotForConditionalGeneration.from_pretrained(model_args.model_name_or_path, **kwargs)
    return model, ParrotProcessor.from_pretrained(model_args.model_name_or_path)


def prepare_stage(model, stage: int, training_args, model_args, train_vision: bool = False,
                  train_llm: bool | None = None):
    """Set `model` up for `stage` (`recipes.setup_stage`: trainable parameters, `use_moe`) and return the LoRA
    config with `model_args.use_peft` (stage 2 only; the vision tower then stays frozen), else None. A
    `training_args.learning_rate` of None becomes the stage's rate in the paper (`STAGE_LEARNING_RATE`)."""
    if training_args.learning_rate is None:
        training_args.learning_rate = STAGE_LEARNING_RATE[stage]
    if model_args.use_peft:
        if stage == 1:
            raise ValueError("stage 1 trains only the projector; --use_peft is for stage 2")
        if train_llm is False:
            raise ValueError("--use_peft adapts the LLM with LoRA and --train_llm False freezes it: give one of them")
        setup_stage(model, stage)
        return lora_config_for_parrot(model_args)
    counts = setup_stage(model, stage, train_vision=train_vision, train_llm=train_llm)
    logger.info("stage %d: %d / %d parameters train", stage, counts["trainable"], counts["total"])
    return None


def _folders(script_args: ParrotScriptArguments, n: int) -> list[str | None]:
    folders = script_args.image_folders or [None]
    if len(folders) == 1:
        return folders * n
    if len(folders) != n:
        raise ValueError(f"--image_folders: give one folder or one per source ({n}), got {len(folders)}")
    return folders


def mlan_sources(script_args: ParrotScriptArguments) -> tuple[list[str], list[float]]:
    """MLAN's sources and sampling ratios: the text sources share 1 - `visual_ratio`, the visual ones the rest."""
    if not script_args.text_datasets:
        raise ValueError("MLAN needs --text_datasets")
    sources = list(script_args.text_datasets)
    ratios = [(1.0 - script_args.visual_ratio) / len(sources)] * len(sources)
    if script_args.visual_ratio > 0:
        if not script_args.visual_datasets:
            raise ValueError("--visual_ratio > 0 needs --visual_datasets")
        sources += script_args.visual_datasets
        ratios += [script_args.visual_ratio / len(script_args.visual_datasets)] * len(script_args.visual_datasets)
    return sources, ratios


def load_training_data(script_args: ParrotScriptArguments, sources: list[str], ratios: list[float] | None = None,
                       seed: int = 0):
    """SFT sources (`data.load_source`: LLaVA JSON, local files, Hub ids) validated and mixed by `ratios` →
    (dataset, `DataReport`). The report's counts are final here, or grow while training reads streamed data."""
    from .data import load_source, mix_datasets

    if not sources:
        raise ValueError("no training data: pass --datasets")
    report = DataReport()
    datasets = [
        load_source(source, image_folder=folder, split=script_args.dataset_split, on_error=script_args.on_bad_sample,
                    check_images=script_args.check_images, streaming=script_args.streaming, report=report)
        for source, folder in zip(sources, _folders(script_args, len(sources)))
    ]
    if report.num_skipped:
        logger.warning("training data: %s", report.summary())
    return mix_datasets(datasets, ratios, seed=seed), report


def load_preference_data(script_args: ParrotScriptArguments, seed: int = 0):
    """Preference sources (JSON/JSONL/Hub) with `prompt`, `chosen`, `rejected` and `images`/`image` (paths relative
    to the image folder, or decoded images), validated by `data.normalize_preference` → (dataset, `DataReport`)."""
    from datasets import load_dataset

    from .data import mix_datasets, normalize_preference

    if not script_args.datasets:
        raise ValueError("no training data: pass --datasets (preference data: prompt, chosen, rejected, images)")
    report = DataReport()
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
                                             check_images=script_args.check_images, source=source, report=report))
    if report.num_skipped:
        logger.warning("preference data: %s", report.summary())
    return mix_datasets(datasets, script_args.dataset_ratios, seed=seed), report


def save_trained(trainer, output_dir: str, merge_lora: bool = True) -> None:
    """Save the trained model and processor to `output_dir` (a LoRA run: the adapter and the model's config, see
    `recipes.ParrotTrainerMixin`); with `merge_lora`, a LoRA run also gets a merged plain checkpoint in
    `<output_dir>/merged` that loads with `ParrotForConditionalGeneration.from_pretrained`."""
    from peft import PeftModel

    from .builder import save_merged

    trainer.save_model(output_dir)
    if merge_lora and isinstance(trainer.model, PeftModel) and trainer.accelerator.is_main_process:
        save_merged(trainer.model, trainer.processing_class, os.path.join(output_dir, "merged"))


def train_sft(script_args: ParrotScriptArguments, training_args, model_args=None, *, mlan: bool = False,
              model=None, processor=None, before_train=None):
    """The steps of examples/train_sft.py (train_mlan.py with `mlan`) in one call. `training_args` is a
    `trl.SFTConfig` (a `ParrotSFTConfig` brings the paper's defaults), `model_args` a `trl.ModelConfig` (default:
    full fine-tuning). `model` + `processor` train an in-memory Parrot instead of loading
    `model_args.model_name_or_path`; `before_train(trainer)` runs just before training. Returns the trainer after
    training and saving to `training_args.output_dir`."""
    from trl import ModelConfig

    from .recipes import ParrotSFTTrainer, check_max_length, check_text_only_samples

    model_args = model_args or ModelConfig()
    stage = 2 if mlan else script_args.stage
    if (model is None) != (processor is None):
        raise ValueError("pass model and processor together (or neither, to load model_args.model_name_or_path)")
    if model is None:
        model, processor = load_model_and_processor(script_args, model_args)
    peft_config = prepare_stage(model, stage, training_args, model_args, train_vision=script_args.train_vision,
                                train_llm=script_args.train_llm)
    sources, ratios = mlan_sources(script_args) if mlan else (script_args.datasets, script_args.dataset_ratios)
    train_dataset, report = load_training_data(script_args, sources, ratios, seed=training_args.seed)
    check_max_length(training_args.max_length, processor.image_seq_length, script_args.max_images_per_sample)
    check_text_only_samples(model, train_dataset)
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    trainer = ParrotSFTTrainer(model=model, args=training_args, train_dataset=train_dataset,
                               processing_class=processor, peft_config=peft_config,
                               multimodal_lr=script_args.multimodal_lr,
                               router_lr=script_args.router_lr)
    if before_train is not None:
        before_train(trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trained(trainer, training_args.output_dir, merge_lora=script_args.merge_lora)
    logger.info("training data: %s", report.summary())
    return trainer


__all__ = [
    "ParrotScriptArguments", "load_model_and_processor", "prepare_stage", "mlan_sources", "load_training_data",
    "load_preference_data", "save_trained", "train_sft",
]
