"""The steps examples/train_sft.py, train_mlan.py and train_dpo.py are made of, each taking the scripts' dataclasses
(`configs.ParrotScriptArguments`, `ParrotSFTConfig` / `ParrotDPOConfig`, `trl.ModelConfig`): load the model, set it
up for the stage, load and mix the data, save what was trained. `train_sft` runs the SFT script's steps in one call
(for programs that hold the dataclasses already, such as `parrot-demo`)."""

from __future__ import annotations

import os
from dataclasses import fields, replace

from transformers.utils import logging

from ..quantization import QuantizationSetupError, require_bitsandbytes
from .configs import ParrotScriptArguments
from .data import DataReport
from .recipes import STAGE_LEARNING_RATE, apply_stage_config, lora_config_for_parrot, mark_prepared, setup_stage

logger = logging.get_logger(__name__)


# the recipe behind each example script: the stage it trains (None: `--stage`)
RECIPE_STAGE: dict[str, int | None] = {"sft": None, "mlan": 2, "dpo": 2}
# The fields of `trl.ModelConfig` the scripts honour; another one given is refused (no flag is ignored).
LOADING_FIELDS = ("model_name_or_path", "model_revision", "dtype", "attn_implementation")
LORA_FIELDS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_parameters",
    "lora_modules_to_save",
    "lora_task_type",
    "use_rslora",
    "use_dora",
)  # need --use_peft
KBIT_FIELDS = ("load_in_4bit", "load_in_8bit")
BNB_4BIT_FIELDS = ("bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")  # need --load_in_4bit
MODEL_CONFIG_FIELDS = frozenset((*LOADING_FIELDS, "use_peft", *LORA_FIELDS, *KBIT_FIELDS, *BNB_4BIT_FIELDS))


def _is_kbit(model_args) -> bool:
    return bool(model_args.load_in_4bit or model_args.load_in_8bit)


def recipe_stage(script_args: ParrotScriptArguments, recipe: str) -> int:
    """The stage `recipe` ("sft", "mlan", "dpo") trains: `--stage` for SFT, stage 2 for MLAN and DPO."""
    if recipe not in RECIPE_STAGE:
        raise ValueError(f"recipe must be one of {list(RECIPE_STAGE)}, got {recipe!r}")
    stage = RECIPE_STAGE[recipe]
    if stage is None:
        return script_args.stage
    if script_args.stage != stage:
        raise ValueError(f"{recipe.upper()} trains like stage {stage}; --stage {script_args.stage} does not apply")
    return stage


def check_model_args(
    script_args: ParrotScriptArguments, training_args, model_args, recipe: str = "sft", in_memory: bool = False
) -> None:
    """Refuse every combination of the scripts' flags the recipe cannot honour, before anything is loaded.
    `in_memory`: the model is given (not loaded from `--model_name_or_path` or built from parts)."""
    stage = recipe_stage(script_args, recipe)
    defaults = {f.name: f.default for f in fields(model_args)}

    def given(names) -> list[str]:
        return [f"--{name}" for name in names if getattr(model_args, name) != defaults[name]]

    unknown = given(sorted(set(defaults) - MODEL_CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not supported by Parrot's training recipes")
    if not model_args.use_peft and given(LORA_FIELDS):
        raise ValueError(f"{', '.join(given(LORA_FIELDS))} configure LoRA: add --use_peft")
    if model_args.use_peft and model_args.lora_task_type != "CAUSAL_LM":
        raise ValueError(f"--lora_task_type {model_args.lora_task_type}: Parrot trains as a causal LM (CAUSAL_LM)")
    fresh = bool(script_args.vision_model or script_args.llm_model)
    if fresh:
        if not (script_args.vision_model and script_args.llm_model):
            raise ValueError("--vision_model and --llm_model go together")
        if model_args.model_name_or_path:
            raise ValueError(
                "--model_name_or_path loads a Parrot checkpoint and --vision_model/--llm_model build a "
                "fresh one: give one of them"
            )
        if model_args.model_revision not in (None, "main"):
            raise ValueError(
                "--model_revision applies to --model_name_or_path; a fresh build (--vision_model, "
                "--llm_model) loads each part's default revision"
            )
    elif not (model_args.model_name_or_path or in_memory):
        raise ValueError("pass --model_name_or_path (a Parrot checkpoint) or --vision_model and --llm_model")
    elif getattr(training_args, "trust_remote_code", False):
        raise ValueError(
            "--trust_remote_code: a Parrot checkpoint loads with this package's classes and never runs "
            "the checkpoint's own code; leave it off (it applies to --vision_model/--llm_model)"
        )
    if training_args.model_init_kwargs:
        raise ValueError(
            "--model_init_kwargs: the scripts load the model themselves; use --dtype, "
            "--attn_implementation and the quantization flags"
        )
    if model_args.use_peft:
        if stage == 1:
            raise ValueError("stage 1 trains only the projector; --use_peft is for stage 2")
        if script_args.train_llm is False:
            raise ValueError("--use_peft adapts the LLM with LoRA and --train_llm False freezes it: give one of them")
        if script_args.train_vision:
            raise ValueError(
                "--train_vision with --use_peft: LoRA adapts the LLM only and the vision tower stays "
                "frozen; leave --train_vision off or train without --use_peft"
            )
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise QuantizationSetupError("--load_in_4bit and --load_in_8bit exclude each other: give one of them")
    if not model_args.load_in_4bit and given(BNB_4BIT_FIELDS):
        raise QuantizationSetupError(
            f"{', '.join(given(BNB_4BIT_FIELDS))} configure 4-bit loading: add --load_in_4bit"
        )
    if not _is_kbit(model_args):
        return
    flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
    if stage == 1:
        raise QuantizationSetupError(
            f"{flag}: stage 1 trains the projector of a fresh model in full precision; "
            "quantized training (QLoRA) is for stage 2, MLAN and DPO"
        )
    if not model_args.use_peft:
        raise QuantizationSetupError(
            f"{flag}: quantized weights cannot be trained; add --use_peft (QLoRA: LoRA on "
            "the quantized LLM, projector and MoE in full precision)"
        )
    if fresh:
        raise QuantizationSetupError(
            f"{flag} needs a Parrot checkpoint (--model_name_or_path): the merged model is "
            "rebuilt from it unquantized; train stage 1 first"
        )
    if model_args.dtype in (None, "auto"):
        raise QuantizationSetupError(
            f"{flag}: give --dtype bfloat16 or float32, the dtype of the unquantized modules and of the 4-bit matmuls"
        )
    require_bitsandbytes()


def load_model_and_processor(script_args: ParrotScriptArguments, training_args, model_args, recipe: str = "sft"):
    """Fresh model from parts (--vision_model + --llm_model) or a Parrot checkpoint (--model_name_or_path), with
    `--load_in_4bit` / `--load_in_8bit` quantized (the LLM's linear layers; the model declares which modules stay in
    the compute dtype) on the training device. Every flag is checked first (`check_model_args`)."""
    import torch

    from .. import ParrotForConditionalGeneration, ParrotProcessor
    from .builder import build_parrot_from_pretrained

    check_model_args(script_args, training_args, model_args, recipe)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if script_args.vision_model:
        hub_kwargs = {"trust_remote_code": True} if training_args.trust_remote_code else {}
        model, processor = build_parrot_from_pretrained(
            script_args.vision_model, script_args.llm_model, dtype=dtype, hub_kwargs=hub_kwargs
        )
        if model_args.attn_implementation:
            model.set_attn_implementation(model_args.attn_implementation)
        return model, processor
    if _is_kbit(model_args):
        from trl import get_quantization_config

        # k-bit layers are placed at load time: on this process's training device
        kwargs.update(quantization_config=get_quantization_config(model_args), device_map={"": training_args.device})
    model = ParrotForConditionalGeneration.from_pretrained(
        model_args.model_name_or_path, dtype=dtype, revision=model_args.model_revision, **kwargs
    )
    processor = ParrotProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    return model, processor


def prepare_kbit_model(model, mixed_precision: bool = True) -> int:
    """PEFT's k-bit preparation (`peft.prepare_model_for_kbit_training`: every parameter frozen, every unquantized one
    upcast to float32), then, when training runs under 16-bit mixed precision (`mixed_precision`: the trainer's
    `--bf16` / `--fp16`, whose autocast runs every matmul in 16 bits anyway), the input embeddings and `lm_head` back
    in the 16-bit dtype they were loaded in, as TRL's QLoRA does: they never train, and in float32 they would double
    the largest frozen weights (at Parrot-14B 1.6B parameters, 2.9 GiB). Norms, biases, vision tower, projector and
    MoE stay float32; without autocast everything unquantized does (the float32 hidden states meet a float32
    `lm_head`). Returns the number of parameters cast back."""
    from peft import prepare_model_for_kbit_training

    embeddings = {model.get_input_embeddings(), model.get_output_embeddings()}
    loaded = {parameter: parameter.dtype for module in embeddings for parameter in module.parameters()}
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if not mixed_precision:
        return 0
    cast = 0
    for parameter, dtype in loaded.items():
        if parameter.dtype != dtype and dtype.itemsize == 2:
            parameter.data = parameter.data.to(dtype)
            cast += parameter.numel()
    return cast


def prepare_stage(model, script_args: ParrotScriptArguments, training_args, model_args, recipe: str = "sft"):
    """Set `model` up for the recipe's stage and return `(training_args, peft_config)`: a copy of `training_args`
    with the stage's learning rate in the paper when none was given (`STAGE_LEARNING_RATE`) and the columns Parrot's
    collators need, and the LoRA config with `--use_peft` (else None).

    Full training: `recipes.setup_stage` (trainable parameters, `use_moe`). LoRA: the stage's config only (PEFT
    freezes the rest); a k-bit model is prepared for training first (`prepare_kbit_model`: frozen, unquantized
    weights in float32 but, under `--bf16` / `--fp16`, the embeddings and `lm_head`; activation checkpointing stays
    the trainer's `--activation_checkpointing`).
    """
    check_model_args(script_args, training_args, model_args, recipe, in_memory=True)
    stage = recipe_stage(script_args, recipe)
    changes = {"learning_rate": STAGE_LEARNING_RATE[stage]} if training_args.learning_rate is None else {}
    if hasattr(training_args, "dataset_kwargs"):  # SFT: Parrot's rows are already in the collator's schema
        changes["dataset_kwargs"] = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args = replace(training_args, remove_unused_columns=False, **changes)
    if model_args.use_peft:
        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            prepare_kbit_model(model, mixed_precision=bool(training_args.bf16 or training_args.fp16))
        apply_stage_config(model, stage)
        model.requires_grad_(False)
        peft_config = lora_config_for_parrot(model_args)
    else:
        counts = setup_stage(model, stage, train_vision=script_args.train_vision, train_llm=script_args.train_llm)
        logger.info("stage %d: %d / %d parameters train", stage, counts["trainable"], counts["total"])
        peft_config = None
    mark_prepared(model, stage)
    return training_args, peft_config


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


def load_training_data(
    script_args: ParrotScriptArguments, sources: list[str], ratios: list[float] | None = None, seed: int = 0
):
    """SFT sources (`data.load_source`: LLaVA JSON, local files, Hub ids) validated and mixed by `ratios` →
    (dataset, `DataReport`). The report's counts are final here, or grow while training reads streamed data."""
    from .data import load_source, mix_datasets

    if not sources:
        raise ValueError("no training data: pass --datasets")
    report = DataReport()
    datasets = [
        load_source(
            source,
            image_folder=folder,
            split=script_args.dataset_split,
            on_error=script_args.on_bad_sample,
            check_images=script_args.check_images,
            streaming=script_args.streaming,
            report=report,
        )
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
            raw = load_dataset(
                {"jsonl": "json"}.get(extension, extension), data_files=source, split=script_args.dataset_split
            )
        else:
            name, _, config = source.partition(":")
            raw = load_dataset(name, config or None, split=script_args.dataset_split)
        datasets.append(
            normalize_preference(
                raw,
                image_folder=folder,
                on_error=script_args.on_bad_sample,
                check_images=script_args.check_images,
                source=source,
                report=report,
            )
        )
    if report.num_skipped:
        logger.warning("preference data: %s", report.summary())
    return mix_datasets(datasets, script_args.dataset_ratios, seed=seed), report


def save_trained(trainer, output_dir: str, merge_lora: bool = True) -> None:
    """Save the trained model and processor to `output_dir` (a LoRA run: the adapter and the model's config, see
    `recipes.ParrotTrainerMixin`); with `merge_lora`, a LoRA run also gets a merged plain checkpoint in
    `<output_dir>/merged` that loads with `ParrotForConditionalGeneration.from_pretrained`. A k-bit (QLoRA) run
    merges onto its base checkpoint reloaded unquantized in the model's dtype (`builder.merge_adapter_checkpoint`),
    never into the quantized weights."""
    from peft import PeftModel

    from .builder import merge_adapter_checkpoint, save_merged
    from .recipes import _parrot

    trainer.save_model(output_dir)
    if not (merge_lora and isinstance(trainer.model, PeftModel) and trainer.accelerator.is_main_process):
        return
    merged_dir = os.path.join(output_dir, "merged")
    parrot = _parrot(trainer.model)
    if getattr(parrot, "is_loaded_in_4bit", False) or getattr(parrot, "is_loaded_in_8bit", False):
        base = trainer.model.peft_config[trainer.model.active_adapter].base_model_name_or_path
        merge_adapter_checkpoint(base, output_dir, merged_dir, dtype=parrot.config.dtype)
    else:
        save_merged(trainer.model, trainer.processing_class, merged_dir)


def train_sft(
    script_args: ParrotScriptArguments,
    training_args,
    model_args=None,
    *,
    mlan: bool = False,
    model=None,
    processor=None,
    before_train=None,
):
    """The steps of examples/train_sft.py (train_mlan.py with `mlan`) in one call. `training_args` is a
    `trl.SFTConfig` (a `ParrotSFTConfig` brings the paper's defaults; it is not changed), `model_args` a
    `trl.ModelConfig` (default: full fine-tuning). `model` + `processor` train an in-memory Parrot instead of
    loading `model_args.model_name_or_path`; `before_train(trainer)` runs just before training. Returns the trainer
    after training and saving to `training_args.output_dir`."""
    from trl import ModelConfig

    from .recipes import ParrotSFTTrainer

    model_args = model_args or ModelConfig()
    recipe = "mlan" if mlan else "sft"
    if (model is None) != (processor is None):
        raise ValueError("pass model and processor together (or neither, to load model_args.model_name_or_path)")
    if model is None:
        model, processor = load_model_and_processor(script_args, training_args, model_args, recipe)
    training_args, peft_config = prepare_stage(model, script_args, training_args, model_args, recipe)
    sources, ratios = mlan_sources(script_args) if mlan else (script_args.datasets, script_args.dataset_ratios)
    train_dataset, report = load_training_data(script_args, sources, ratios, seed=training_args.seed)
    trainer = ParrotSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        script_args=script_args,
    )
    if before_train is not None:
        before_train(trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trained(trainer, training_args.output_dir, merge_lora=script_args.merge_lora)
    logger.info("training data: %s", report.summary())
    return trainer


__all__ = [
    "ParrotScriptArguments",
    "RECIPE_STAGE",
    "MODEL_CONFIG_FIELDS",
    "recipe_stage",
    "check_model_args",
    "load_model_and_processor",
    "prepare_stage",
    "mlan_sources",
    "load_training_data",
    "load_preference_data",
    "save_trained",
    "train_sft",
]
