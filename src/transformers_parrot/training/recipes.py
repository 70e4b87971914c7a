"""Parrot's training recipes on TRL (paper §3; MLAN and DPO): which parameters train in each stage and what the
stage changes in the model's config, LoRA for the LLM, optimizer parameter groups with a separate projector/MoE
learning rate, the trainers (which also save the config next to LoRA adapters), image-safe `max_length`, and a probe
that checks the MoE router never sees answers. The paper's default hyperparameters are the defaults of
`configs.ParrotSFTConfig` / `ParrotDPOConfig`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .defaults import STAGE_LEARNING_RATE, bf16_available

# what each stage changes in the model's config (stage 1 bypasses the MoE); LoRA adapters are always stage 2
STAGE_CONFIG: dict[int, dict[str, Any]] = {1: {"use_moe": False}, 2: {"use_moe": True}}
# the LLM's linear layers: LoRA targets when the user names none (a regex, so the vision tower is never targeted)
LLM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
MULTIMODAL_MODULES = ("multi_modal_projector", "moe")
ROUTER_MODULE = "gate"  # the MoE's router (`ParrotMultilingualMoE.gate`): its own learning rate with `router_lr`


def _parrot(model) -> nn.Module:
    """The ParrotForConditionalGeneration inside a (PEFT-)wrapped model."""
    from ..models.parrot.modeling_parrot import ParrotForConditionalGeneration

    for module in model.modules():
        if isinstance(module, ParrotForConditionalGeneration):
            return module
    raise TypeError(f"no ParrotForConditionalGeneration in {type(model).__name__}")


def apply_stage_config(model, stage: int) -> nn.Module:
    """Apply the stage's changes to the model's config (`STAGE_CONFIG`); returns the Parrot inside `model`."""
    parrot = _parrot(model)
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    for key, value in STAGE_CONFIG[stage].items():
        setattr(parrot.config, key, value)
    return parrot


def mark_prepared(model, stage: int) -> None:
    """Record that `model` was set up for `stage` (`scripts.prepare_stage`); Parrot's trainers refuse a model
    without it, so no program can skip the stage's setup and checks."""
    _parrot(model)._parrot_training_stage = stage


def prepared_stage(model) -> int | None:
    """The stage `model` was set up for by `scripts.prepare_stage`, or None."""
    return getattr(_parrot(model), "_parrot_training_stage", None)


def setup_stage(model, stage: int, train_vision: bool = False, train_llm: bool | None = None) -> dict[str, int]:
    """Set `requires_grad` for a full-parameter stage and apply the stage's config (`STAGE_CONFIG`); returns
    parameter counts.

    stage 1: only the projector trains, `use_moe=False` (the MoE is bypassed).
    stage 2: projector, MoE and LLM (embeddings and LM head included) train, `use_moe=True`.
    `train_llm` overrides the stage's choice for the LLM (None: the paper's): True in stage 1 for an LLM that is not
    pretrained, False in stage 2 to keep it frozen (both in `parrot-demo`).
    The vision tower stays frozen in both stages unless `train_vision`.
    """
    parrot = apply_stage_config(model, stage)
    trainable = ("model.multi_modal_projector.",)
    if (stage == 2) if train_llm is None else train_llm:
        trainable += ("model.language_model.", "lm_head.")
    if stage == 2:
        trainable += ("model.moe.",)
    if train_vision:
        trainable += ("model.vision_tower.",)
    for name, parameter in parrot.named_parameters():
        parameter.requires_grad_(name.startswith(trainable))
    return count_parameters(parrot)


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def lora_config_for_parrot(model_args=None, **overrides):
    """A `peft.LoraConfig` for stage 2 / DPO: LoRA on the LLM's linear layers, projector and MoE trained fully
    (`modules_to_save`), vision frozen. Reads TRL's `ModelConfig` LoRA fields when given."""
    from peft import LoraConfig

    kwargs: dict[str, Any] = {
        "r": 64,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "target_modules": LLM_LORA_TARGETS,
        "modules_to_save": list(MULTIMODAL_MODULES),
        "task_type": "CAUSAL_LM",
    }
    if model_args is not None:
        kwargs.update(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            use_rslora=model_args.use_rslora,
            use_dora=model_args.use_dora,
        )
        if model_args.lora_target_modules:
            kwargs["target_modules"] = model_args.lora_target_modules
        if model_args.lora_modules_to_save:
            kwargs["modules_to_save"] = list(model_args.lora_modules_to_save)
        if model_args.lora_target_parameters:  # e.g. the stacked experts' 3-D weights
            kwargs["target_parameters"] = list(model_args.lora_target_parameters)
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def multimodal_parameter_names(model) -> set[str]:
    """Names (in `model`, wrapped or not) of the projector and MoE parameters."""
    return {
        name for name, _ in model.named_parameters() if any(f".{part}." in f".{name}" for part in MULTIMODAL_MODULES)
    }


def build_param_groups(
    model,
    learning_rate: float,
    weight_decay: float,
    multimodal_lr: float | None,
    no_decay: Iterable[str] | None = None,
    router_lr: float | None = None,
) -> list[dict]:
    """Optimizer groups: (router, rest of projector + MoE, rest) × (decay, no decay); projector + MoE get
    `multimodal_lr`, the MoE's router (`moe.gate`) `router_lr` (default: the one of projector + MoE)."""
    mm_names = multimodal_parameter_names(model)
    no_decay = set(no_decay or ())
    groups: dict[tuple[int, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = (2 if f".{ROUTER_MODULE}." in f".{name}" else 1) if name in mm_names else 0  # rest, multimodal, router
        groups.setdefault((part, name not in no_decay), []).append(parameter)
    part_lr = {1: multimodal_lr, 2: router_lr if router_lr is not None else multimodal_lr}
    out = []
    for (part, decay), params in sorted(groups.items()):
        group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if part_lr.get(part) is not None:
            group["lr"] = part_lr[part]
        out.append(group)
    return out


class ParrotTrainerMixin:
    """What Parrot's trainers add to TRL's:
    - the checks no program can skip: the model was set up by `scripts.prepare_stage`, `max_length` holds
      `script_args.max_images_per_sample` images (`check_max_length`), and a frozen LLM gets no text-only samples
      (`check_text_only_samples`);
    - a separate learning rate for projector + MoE (`script_args.multimodal_lr`), as the original's projector
      learning rate, and one for the MoE's router (`router_lr`) (the LR scheduler scales every group by the same
      factor);
    - with a k-bit (QLoRA) model, the fully trained copies of projector + MoE stay in the dtype of the modules
      around them (TRL casts every trainable parameter of a quantized model to bf16, LoRA's included);
    - the model's config saved next to LoRA adapters (in the output folder and every checkpoint): the recipe changed
      it (`STAGE_CONFIG`), so the base checkpoint's config no longer describes the trained model, and
      `builder.merge_adapter_checkpoint` reads it from there;
    - on the CPU, TRL's fused LM head scores only the labelled positions (`lm_head.use_compact_lm_head`).
    """

    multimodal_lr: float | None = None
    router_lr: float | None = None

    def _check_before_init(self, model, args, processing_class, script_args) -> None:
        if prepared_stage(model) is None:
            raise ValueError(
                "set the model up with transformers_parrot.training.prepare_stage before building a "
                "Parrot trainer (trainable parameters, use_moe and the recipe's checks)"
            )
        self.multimodal_lr, self.router_lr = script_args.multimodal_lr, script_args.router_lr
        check_max_length(args.max_length, processing_class.image_seq_length, script_args.max_images_per_sample)

    def _after_init(self) -> None:
        from .lm_head import use_compact_lm_head

        if self.train_dataset is not None:
            check_text_only_samples(self.model, self.train_dataset)
        keep_modules_to_save_dtype(self.model)
        for model in (self.model, getattr(self, "ref_model", None)):
            if model is not None:
                use_compact_lm_head(model.get_base_model() if hasattr(model, "get_base_model") else model)

    def _save(self, output_dir: str | None = None, state_dict=None):
        from peft import PeftModel

        super()._save(output_dir, state_dict=state_dict)
        if isinstance(self.model, PeftModel):
            _parrot(self.model).config.save_pretrained(output_dir or self.args.output_dir)

    def create_optimizer(self, model=None):
        if (self.multimodal_lr is None and self.router_lr is None) or self.optimizer is not None:
            return super().create_optimizer(*([model] if model is not None else []))
        from transformers import Trainer

        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        no_decay = {name for name, _ in model.named_parameters() if name not in decay}
        groups = build_param_groups(
            model,
            self.args.learning_rate,
            self.args.weight_decay,
            self.multimodal_lr,
            no_decay=no_decay,
            router_lr=self.router_lr,
        )
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


def keep_modules_to_save_dtype(model) -> int:
    """Cast PEFT's trained copies (`modules_to_save`: projector, MoE) back to the dtype of the frozen module they
    copy, so that they take that module's inputs; returns the number of parameters cast. LoRA's own weights are left
    as the trainer chose (PEFT casts a LoRA layer's input to its weights' dtype)."""
    from peft.utils.other import ModulesToSaveWrapper

    cast = 0
    for wrapper in model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        dtype = next((p.dtype for p in wrapper.original_module.parameters() if p.is_floating_point()), None)
        for copy in wrapper.modules_to_save.values():
            for parameter in copy.parameters():
                if dtype is not None and parameter.is_floating_point() and parameter.dtype != dtype:
                    parameter.data = parameter.data.to(dtype)
                    cast += 1
    return cast


def _trainer_classes():
    from trl import DPOTrainer, SFTTrainer

    from .configs import ParrotScriptArguments

    class ParrotSFTTrainer(ParrotTrainerMixin, SFTTrainer):
        """`trl.SFTTrainer` + `ParrotTrainerMixin`; `script_args` (default: `ParrotScriptArguments()`) gives the
        learning rates of projector + MoE and router and the most images per sample."""

        def __init__(self, model, args, *pos, script_args: ParrotScriptArguments | None = None, **kwargs):
            self._check_before_init(
                model, args, kwargs.get("processing_class"), script_args or ParrotScriptArguments()
            )
            super().__init__(model, args, *pos, **kwargs)
            self._after_init()

    class ParrotDPOTrainer(ParrotTrainerMixin, DPOTrainer):
        """`trl.DPOTrainer` + `ParrotTrainerMixin`. Without `ref_model`, the reference is the policy with its LoRA
        adapters disabled (`peft_config`, QLoRA included) or, for full training, a frozen copy of the starting
        model."""

        def __init__(
            self, model, ref_model=None, args=None, *pos, script_args: ParrotScriptArguments | None = None, **kwargs
        ):
            self._check_before_init(
                model, args, kwargs.get("processing_class"), script_args or ParrotScriptArguments()
            )
            if ref_model is None and kwargs.get("peft_config") is None and not hasattr(model, "disable_adapter"):
                import copy

                ref_model = copy.deepcopy(model).eval().requires_grad_(False)
            super().__init__(model, ref_model, args, *pos, **kwargs)
            self._after_init()

    return ParrotSFTTrainer, ParrotDPOTrainer


def __getattr__(name):  # lazy: importing the recipes must not import TRL
    if name in ("ParrotSFTTrainer", "ParrotDPOTrainer"):
        sft, dpo = _trainer_classes()
        globals().update(ParrotSFTTrainer=sft, ParrotDPOTrainer=dpo)
        return globals()[name]
    raise AttributeError(name)


def check_max_length(
    max_length: int | None, image_seq_length: int, max_images: int = 1, min_text_tokens: int = 64
) -> None:
    """Refuse a `max_length` that cannot hold `max_images` images plus some text: TRL truncates after the
    processor expanded `<image>`, and the processor refuses to cut image tokens, so a too-short limit would only
    fail mid-run. `None` (no truncation) is always fine."""
    if max_length is None:
        return
    needed = max_images * image_seq_length + min_text_tokens
    if max_length < needed:
        raise ValueError(
            f"max_length={max_length} cannot hold {max_images} image(s) of {image_seq_length} tokens plus "
            f"{min_text_tokens} text tokens ({needed}); raise --max_length (the paper uses 2048) or pass "
            "--max_length None"
        )


def check_text_only_samples(model, dataset) -> None:
    """Refuse text-only samples when the LLM is frozen (stage 1, or stage 2 with `train_llm=False`): only the LLM
    sees them, so they would train nothing, and a batch of them stops the run with an autograd error. Streamed
    data is not counted (it is only read while training)."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or "images" not in dataset.column_names:
        return
    if any(p.requires_grad and ("language_model." in n or "lm_head." in n) for n, p in model.named_parameters()):
        return
    import pyarrow.compute as pc

    images = dataset.select_columns(["images"]).with_format("arrow")[:]["images"]  # lists of paths, not decoded
    text_only = len(images) - (pc.sum(pc.greater(pc.fill_null(pc.list_value_length(images), 0), 0)).as_py() or 0)
    if text_only:
        raise ValueError(
            f"{text_only} of {len(dataset)} training samples have no image, but the LLM is frozen (stage 1, or "
            "--train_llm False): they would train nothing. Leave them out, or pass --train_llm True."
        )


# ---------------------------------------------------------------------------------------------- router probe
class RouterProbe:
    """Checks, inside any trainer, that the router weights the model used for each training sample equal the ones
    it computes at generation for the same prompt.

    Forward hooks on every `ParrotModel` and `ParrotMultilingualMoE` in the model record each training forward's
    router logits; for each row with images, the hook then runs the model on that row's generation prompt (the
    tokens up to and including the last `<|im_start|>assistant\\n`, no padding, no answer) with the row's images,
    under `no_grad` and with the same weights, and stores both. `max_abs_diff()` is the largest difference.
    """

    def __init__(self, model, max_checks: int | None = None):
        from ..models.parrot.modeling_parrot import ParrotModel, ParrotMultilingualMoE

        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.max_checks = max_checks
        self._inner = False
        self._last_logits = None
        self._handles = []
        for module in model.modules():
            if isinstance(module, ParrotMultilingualMoE):
                self._handles.append(module.register_forward_hook(self._moe_hook))
            elif isinstance(module, ParrotModel):
                self._handles.append(module.register_forward_hook(self._model_hook, with_kwargs=True))

    def _moe_hook(self, module, args, output):
        if not self._inner:
            self._last_logits = output[1].detach().float().clone()

    def _model_hook(self, module, args, kwargs, output):
        if self._inner or self._last_logits is None:
            return
        if self.max_checks is not None and len(self.pairs) >= self.max_checks:
            return
        training_logits, self._last_logits = self._last_logits, None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        pixel_values = kwargs.get("pixel_values")
        attention_mask = kwargs.get("attention_mask")
        if input_ids is None or pixel_values is None:
            return
        config = module.config
        seq = config.image_seq_length
        header = torch.tensor(config.assistant_header_ids, device=input_ids.device)
        image_index = 0
        self._inner = True
        try:
            with torch.no_grad():
                for row in range(input_ids.shape[0]):
                    ids = input_ids[row]
                    if attention_mask is not None:
                        ids = ids[attention_mask[row].bool()]
                    n_images = int((ids == config.image_token_id).sum()) // seq
                    if n_images == 0:
                        continue
                    windows = ids.unfold(0, len(header), 1)
                    ends = (windows == header).all(-1).nonzero()
                    prompt = ids[: int(ends[-1]) + len(header)]
                    out = module(
                        input_ids=prompt[None],
                        pixel_values=pixel_values[image_index : image_index + n_images],
                        output_router_logits=True,
                        use_cache=False,
                    )
                    generation_logits = out.router_logits.detach().float()
                    self.pairs.append(
                        (training_logits[image_index : image_index + n_images].cpu(), generation_logits.cpu())
                    )
                    image_index += n_images
        finally:
            self._inner = False

    def max_abs_diff(self) -> float:
        if not self.pairs:
            raise RuntimeError("RouterProbe saw no training forward with images and the MoE enabled")
        return max(float((a - b).abs().max()) for a, b in self.pairs)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


__all__ = [
    "STAGE_LEARNING_RATE",
    "STAGE_CONFIG",
    "LLM_LORA_TARGETS",
    "bf16_available",
    "apply_stage_config",
    "mark_prepared",
    "prepared_stage",
    "setup_stage",
    "keep_modules_to_save_dtype",
    "count_parameters",
    "lora_config_for_parrot",
    "build_param_groups",
    "ParrotTrainerMixin",
    "ParrotSFTTrainer",  # noqa: F822  (defined lazily by __getattr__)
    "ParrotDPOTrainer",  # noqa: F822  (defined lazily by __getattr__)
    "check_max_length",
    "check_text_only_samples",
    "RouterProbe",
]
