"""The arguments of Parrot's training scripts: `ParrotScriptArguments` (model parts, data, Parrot's switches) and
TRL's `SFTConfig` / `DPOConfig` with the paper's defaults (§3 and the release scripts). `trl.TrlParser` reads them
like any TRL config: a flag on the command line or in `--config recipe.yaml` overrides the default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType
from trl import DPOConfig, SFTConfig

from ..models.parrot._compat import training_defaults_mixin
from .defaults import STAGE_LEARNING_RATE, bf16_available


@dataclass
class ParrotScriptArguments:
    """Parrot-specific arguments of the training scripts."""

    stage: int = field(default=2, metadata={"help": "1: align (projector only, MoE off); 2: instruction tuning."})
    vision_model: str | None = field(
        default=None,
        metadata={
            "help": "Build a fresh Parrot from this CLIP vision checkpoint (with --llm_model) instead of loading "
            "--model_name_or_path."
        },
    )
    llm_model: str | None = field(default=None, metadata={"help": "Qwen2 chat LLM checkpoint for a fresh Parrot."})
    datasets: list[str] = field(
        default_factory=list,
        metadata={"help": "Data sources: LLaVA JSON/JSONL files, local data files, or Hub ids (name or name:config)."},
    )
    dataset_ratios: list[float] | None = field(
        default=None, metadata={"help": "Sampling ratio per source (default: equal)."}
    )
    image_folders: list[str] | None = field(
        default=None, metadata={"help": "Image folder per LLaVA JSON source (one for all, or one per source)."}
    )
    dataset_split: str = field(default="train")
    streaming: bool = field(default=False, metadata={"help": "Stream sources (needs --max_steps)."})
    on_bad_sample: str = field(
        default="raise",
        metadata={
            "help": "'raise': stop at the first bad sample (missing/unreadable image, unknown role, empty conversation, "
            "<image> count != images) with an error naming it; 'skip': drop it and count it.",
            "choices": ["raise", "skip"],
        },
    )
    check_images: bool = field(default=True, metadata={"help": "Open every image while loading the data."})
    multimodal_lr: float | None = field(
        default=None, metadata={"help": "Separate learning rate for projector + MoE (default: --learning_rate)."}
    )
    router_lr: float | None = field(
        default=None,
        metadata={
            "help": "Separate learning rate for the MoE's router, `moe.gate` (default: the one of projector + MoE). Its "
            "input is an average of word embeddings, small in an LLM trained from scratch: parrot-demo uses 0.2."
        },
    )
    train_vision: bool = field(default=False, metadata={"help": "Also train the vision tower (not in the paper)."})
    train_llm: bool | None = field(
        default=None,
        metadata={
            "nargs": "?",
            "const": True,  # a bare --train_llm: True
            "help": "Train the LLM (default: the paper's, frozen in stage 1 and trained in stage 2). Not in the paper: "
            "True in stage 1 for an LLM that is not pretrained, False in stage 2 to keep it frozen so that only "
            "projector + MoE (and the vision tower with --train_vision) adapt; parrot-demo does both.",
        },
    )
    max_images_per_sample: int = field(
        default=1,
        metadata={
            "help": "Most images in one sample: --max_length must hold them all (image tokens are never truncated)."
        },
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "With --use_peft, also save a merged plain checkpoint to <output_dir>/merged."}
    )
    # MLAN (train_mlan.py)
    text_datasets: list[str] = field(default_factory=list, metadata={"help": "MLAN: language-only sources."})
    visual_datasets: list[str] = field(default_factory=list, metadata={"help": "MLAN: visual sources to mix in."})
    visual_ratio: float = field(
        default=0.0,
        metadata={"help": "MLAN: share of visual samples (0 = text only); they share batches with the text samples."},
    )


PAPER_WARMUP_RATIO = 0.03  # of the total steps


def _default(name: str, default: Any) -> Any:
    """TrainingArguments' field `name` (its help and parser options) with the paper's `default`."""
    return field(default=default, metadata=TrainingArguments.__dataclass_fields__[name].metadata)


@dataclass
class _PaperDefaults(training_defaults_mixin(warmup_ratio=PAPER_WARMUP_RATIO)):
    """Defaults of every recipe of the paper (3 % warmup and activation checkpointing: `training_defaults_mixin`);
    the rest is TRL's. Mixed in before TRL's config class."""

    lr_scheduler_type: SchedulerType | str = _default("lr_scheduler_type", "cosine")
    num_train_epochs: float = _default("num_train_epochs", 1.0)
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision (default: on when the GPU supports it, as in the paper)."},
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bf16_available() and not self.fp16
        super().__post_init__()


@dataclass
class ParrotSFTConfig(_PaperDefaults, SFTConfig):
    """`trl.SFTConfig` with the paper's defaults: the stage's learning rate (1e-3 for stage 1, 2e-5 for stage 2 and
    MLAN; filled in by `scripts.prepare_stage`), cosine schedule, 3 % warmup, 1 epoch, `max_length` 2048,
    activation checkpointing, bf16 when the GPU supports it, loss on assistant answers only. Parrot's rows are
    already in the vision collator's schema (`skip_prepare_dataset`, all columns kept); packing and padding-free
    batches are refused (they would cut or merge image token runs)."""

    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": f"Initial learning rate (default: the paper's, {STAGE_LEARNING_RATE[1]:g} for --stage 1 and "
            f"{STAGE_LEARNING_RATE[2]:g} for stage 2 and MLAN)."
        },
    )
    max_length: int | None = field(
        default=2048,
        metadata={
            "help": "Longest tokenized sequence; must hold --max_images_per_sample images (None: no truncation)."
        },
    )
    assistant_only_loss: bool = field(default=True, metadata={"help": "Loss on assistant answers only."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the images column for the collator."})
    dataset_kwargs: dict[str, Any] | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Parrot's rows need no preparation by SFTTrainer."},
    )

    def __post_init__(self):
        if self.packing or self.padding_free:
            raise ValueError("packing and padding-free batches do not work with images; leave them off")
        super().__post_init__()


@dataclass
class ParrotDPOConfig(_PaperDefaults, DPOConfig):
    """`trl.DPOConfig` with the paper's schedule (cosine, 3 % warmup, 1 epoch, activation checkpointing, bf16 when
    the GPU supports it), a preference-tuning learning rate of 5e-7 and `max_length` 2048 (it must hold the
    prompt's image tokens)."""

    learning_rate: float = field(default=5e-7, metadata={"help": "Initial learning rate."})
    max_length: int | None = field(
        default=2048,
        metadata={
            "help": "Longest prompt + completion; must hold --max_images_per_sample images (None: no truncation)."
        },
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the images column for the collator."})


__all__ = ["ParrotScriptArguments", "ParrotSFTConfig", "ParrotDPOConfig"]
