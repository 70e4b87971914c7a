"""The key mapping: one table of (original name pattern → our name, operation), and the key check that runs on
tensor headers before anything is written.

In a pattern, ``*`` is the rest of the name (carried over unchanged) and ``{e}`` an expert index. The table is
read in both directions: from our model's state dict (built on the meta device) to the original keys it needs
(`build_plan`, which also gives each original key's expected shape), then every input key is checked against that
plan (`check_against_plan`), so an unexpected, missing or mis-shaped key stops the conversion with its original
name in the message.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import torch

from .errors import ConversionError
from .reading import TensorInfo


class Op(enum.Enum):
    """What happens to an original tensor on its way to our key."""

    COPY = "copy"
    GROW_ROWS = "copy, then append mean-initialised rows up to the new vocabulary size (<image>)"
    STACK_GATE = "expert e's (I, D) → rows [0, I) of [e] in the stacked (E, 2I, D)"
    STACK_UP = "expert e's (I, D) → rows [I, 2I) of [e] in the stacked (E, 2I, D)"
    STACK_DOWN = "expert e's (D, I) → [e] in the stacked (E, D, I)"


STACK_OPS = (Op.STACK_GATE, Op.STACK_UP, Op.STACK_DOWN)

KEY_MAPPING: tuple[tuple[str, str, Op], ...] = (
    ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", Op.GROW_ROWS),
    ("model.layers.*", "model.language_model.layers.*", Op.COPY),
    ("model.norm.*", "model.language_model.norm.*", Op.COPY),
    ("lm_head.weight", "lm_head.weight", Op.GROW_ROWS),
    ("model.mm_projector.0.*", "model.multi_modal_projector.linear_1.*", Op.COPY),
    ("model.mm_projector.2.*", "model.multi_modal_projector.linear_2.*", Op.COPY),
    ("model.moe_model.gate.weight", "model.moe.gate.weight", Op.COPY),
    ("model.moe_model.experts.{e}.gate_proj.weight", "model.moe.experts.gate_up_proj", Op.STACK_GATE),
    ("model.moe_model.experts.{e}.up_proj.weight", "model.moe.experts.gate_up_proj", Op.STACK_UP),
    ("model.moe_model.experts.{e}.down_proj.weight", "model.moe.experts.down_proj", Op.STACK_DOWN),
    ("model.vision_tower.vision_tower.vision_model.*", "model.vision_tower.*", Op.COPY),
)

# Non-persistent buffers that old checkpoints sometimes contain: recomputed by the model, reported, not converted.
IGNORABLE_BUFFERS = (re.compile(r"\.rotary_emb\.inv_freq$"), re.compile(r"embeddings\.position_ids$"))


def _regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(r"\*", "(.+)").replace(r"\{e\}", r"(\d+)"))


_RULES = tuple((original, _regex(ours), op) for original, ours, op in KEY_MAPPING)


@dataclass
class Piece:
    """One original tensor and where it goes: our key, the operation, the expected original shape and, for the
    stacking operations, the expert index."""

    original: str
    target: str
    op: Op
    shape: tuple[int, ...]
    expert: int | None = None


def _original_shape(op: Op, target_shape: tuple[int, ...], vocab_rows: int) -> tuple[int, ...]:
    if op is Op.GROW_ROWS:
        return (vocab_rows,) + target_shape[1:]
    if op in (Op.STACK_GATE, Op.STACK_UP):  # (E, 2I, D) → (I, D)
        _, two_i, d = target_shape
        return (two_i // 2, d)
    if op is Op.STACK_DOWN:  # (E, D, I) → (D, I)
        return target_shape[1:]
    return target_shape


def build_plan(
    model_state: dict[str, torch.Tensor], num_experts: int, vocab_rows: int, tied: bool
) -> dict[str, Piece]:
    """Original key → Piece for every tensor the converted model needs (from its meta-device state dict).

    ``vocab_rows`` is the number of embedding rows in the input (the target may have more after adding <image>);
    with ``tied`` embeddings the LM head is not read (it is the embedding matrix)."""
    plan: dict[str, Piece] = {}
    for target, tensor in model_state.items():
        if target == "lm_head.weight" and tied:
            continue
        shape = tuple(tensor.shape)
        rules = [(original, match, op) for original, regex, op in _RULES if (match := regex.fullmatch(target))]
        if not rules:
            raise ConversionError(f"internal: the key mapping has no original name for {target!r}")
        for original, match, op in rules:
            expected = _original_shape(op, shape, vocab_rows)
            if op in STACK_OPS:
                for e in range(num_experts):
                    key = original.replace("{e}", str(e))
                    plan[key] = Piece(key, target, op, expected, e)
            else:
                key = original.replace("*", match.group(1)) if match.groups() else original
                plan[key] = Piece(key, target, op, expected)
    return plan


def check_against_plan(tensors: dict[str, TensorInfo], plan: dict[str, Piece], tied: bool) -> list[str]:
    """Raise ConversionError listing every unexpected, missing or mis-shaped key; return the ignored keys."""
    unexpected, ignored, wrong = [], [], []
    for name, info in tensors.items():
        piece = plan.get(name)
        if piece is None:
            if any(p.search(name) for p in IGNORABLE_BUFFERS) or (tied and name == "lm_head.weight"):
                ignored.append(name)
            else:
                unexpected.append(f"{name} (in {info.file.name})")
            continue
        if info.shape != piece.shape:
            wrong.append(f"{name}: shape {list(info.shape)} in {info.file.name}, expected {list(piece.shape)}")
    missing = sorted(set(plan) - set(tensors))
    problems = []
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key(s) (not part of Parrot; refusing to drop them): "
            + ", ".join(sorted(unexpected))
        )
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing))
    if wrong:
        problems.append(f"{len(wrong)} key(s) with the wrong shape: " + "; ".join(sorted(wrong)))
    if problems:
        raise ConversionError("the checkpoint does not match the Parrot layout:\n  " + "\n  ".join(problems))
    return ignored


__all__ = ["KEY_MAPPING", "Op", "Piece", "build_plan", "check_against_plan"]
