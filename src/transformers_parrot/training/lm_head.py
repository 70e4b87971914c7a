"""A faster LM head for TRL's trainers on CPU: score only the labelled positions, with one log-softmax.

TRL's trainers patch the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`): called with
``fused_lm_head=True`` it returns per-token log-probabilities without materialising the full logits. On CUDA it runs
Triton kernels on the labelled positions only; elsewhere it folds every position of the batch, prompt and image
tokens included, through a chain of torch operations. On the CPU that costs more than the rest of a small model's
training step (`benchmarks/bench_cpu_lm_head.py`: a `parrot-demo` stage-2 step takes 2.15x as long with it).
`use_compact_lm_head` wraps the patched forward so that, on a device without TRL's kernels, it projects only the
labelled positions and returns the same `FusedCausalLMOutput` fields from one log-softmax; everything else (CUDA,
outputs too large for one logits matrix, router losses) goes to TRL's own head.

What it relies on in TRL is checked in one place, `trl_fused_head`: a TRL release in `TRL_FUSED_HEAD_RELEASES`
(the ones `modeling_tests/test_training.py` compares field by field against TRL's head), TRL's public
`add_fused_lm_head` and `FusedCausalLMOutput` with the fields computed here, and a patched forward whose signature
takes `fused_lm_head`. When any of them differs, the trainers keep TRL's own head and log why.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# The most labelled-positions x vocabulary logits computed at once (fp32: 256 MB); above it TRL's tiles take over.
MAX_COMPACT_LOGITS = 64 * 2**20
# Devices where TRL's fused head runs its Triton kernels on the labelled positions: it is left alone there.
KERNEL_DEVICES = ("cuda", "xpu")
# TRL releases (major, minor) whose fused head the compact head reproduces: from 1.16 up to, not including, 2.0
TRL_FUSED_HEAD_RELEASES = ((1, 16), (2, 0))
# the fields of TRL's FusedCausalLMOutput; the compact head fills all but `aux_loss` (router losses go to TRL's head)
FUSED_FIELDS = ("loss", "log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask", "aux_loss")


def trl_fused_head():
    """TRL's `FusedCausalLMOutput` when the installed TRL's fused head is one the compact head reproduces, else
    (None, the reason)."""
    import trl

    try:
        release = tuple(int(part) for part in trl.__version__.split(".")[:2])
    except ValueError:
        return None, f"TRL's version {trl.__version__!r} is not a release number"
    low, high = TRL_FUSED_HEAD_RELEASES
    if not low <= release < high:
        return None, (
            f"TRL {trl.__version__} is outside the releases the compact head was checked against "
            f"({'.'.join(map(str, low))} to before {'.'.join(map(str, high))})"
        )
    from trl.trainer import utils as trl_utils

    output_class = getattr(trl_utils, "FusedCausalLMOutput", None)
    if output_class is None or not hasattr(trl_utils, "add_fused_lm_head"):
        return None, f"TRL {trl.__version__} has no add_fused_lm_head / FusedCausalLMOutput"
    fields = tuple(f.name for f in dataclasses.fields(output_class))
    if set(fields) != set(FUSED_FIELDS):
        return None, f"TRL {trl.__version__}'s FusedCausalLMOutput has the fields {fields}, not {FUSED_FIELDS}"
    return output_class, None


def _takes_fused_lm_head(forward) -> bool:
    """Whether `forward` (an instance's bound forward) is a patched one taking `fused_lm_head` itself (not through
    the signature of the forward it wraps)."""
    if not isinstance(forward, types.MethodType):
        return False
    return "fused_lm_head" in inspect.signature(forward.__func__, follow_wrapped=False).parameters


def _fused_fields(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token fields of `FusedCausalLMOutput`, zero where `mask` is False.

    logits (T, V) of the T labelled positions, labels (B, S) and mask (B, S) with T = mask.sum() → each field (B, S).
    """
    z = logits.float()
    log_p = z.log_softmax(-1)
    target = labels[mask]
    fields = {
        "log_probs": log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1),
        "entropy": -(log_p.exp() * log_p).sum(-1),
    }
    with torch.no_grad():
        z = z.detach()
        fields["log_sum_sq_probs"] = torch.logsumexp(2 * log_p.detach(), -1)
        fields["mean_logits"] = z.mean(-1)
        # a label tied with an earlier token is not top-1 (argmax returns the first maximum), as in TRL's kernel
        fields["is_top1"] = z.argmax(-1) == target
    return {name: value.new_zeros(mask.shape).masked_scatter(mask, value) for name, value in fields.items()}


def use_compact_lm_head(model: torch.nn.Module) -> bool:
    """Wrap the fused forward TRL installed on `model` (a `ParrotForConditionalGeneration`, or a PEFT model's base)
    with the compact CPU path. Returns False, changing nothing, when `model` has no fused head, its text model
    scales or caps its logits (TRL's head handles those), or the installed TRL is not one it reproduces
    (`trl_fused_head`; logged)."""
    trl_forward = model.__dict__.get("forward")
    text_config = model.config.get_text_config()
    scaled = any(
        getattr(text_config, name, None) is not None
        for name in (
            "final_logit_softcapping",
            "logit_scale",
            "output_multiplier",
            "lm_head_multiplier",
            "logits_scaling",
        )
    )
    if not _takes_fused_lm_head(trl_forward) or scaled:
        return False
    FusedCausalLMOutput, reason = trl_fused_head()  # noqa: N806 (a class)
    if FusedCausalLMOutput is None:
        logger.warning("keeping TRL's own fused LM head on %s: %s", type(model).__name__, reason)
        return False

    @functools.wraps(type(model).forward)  # generate validates its keyword arguments against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        lm_head = self.get_output_embeddings()
        # position i predicts label i + 1, unless the labels come shifted already
        target = labels[:, 1:] if shift_labels is None and labels is not None else shift_labels
        mask = None if target is None else target != -100
        compact = (
            fused_lm_head
            and mask is not None
            and lm_head.weight.device.type not in KERNEL_DEVICES
            and not kwargs.get("output_router_logits")
            and int(mask.sum()) * lm_head.weight.shape[0] <= MAX_COMPACT_LOGITS
        )
        if not compact:
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden = hidden[:, :-1]
        hidden = hidden.to(lm_head.weight.device)
        target, mask = target.to(lm_head.weight.device), mask.to(lm_head.weight.device)
        fields = _fused_fields(lm_head(hidden[mask]), target, mask)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-fields["log_probs"].sum() / count, label_mask=mask, **fields)

    model.forward = types.MethodType(forward, model)
    return True
