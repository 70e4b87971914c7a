"""Writing the converted weights: tensors streamed from the input one at a time, renamed and transformed by the key
plan, cast, and written into safetensors shards of at most ``max_shard_size`` bytes (named and indexed as
transformers' ``save_pretrained`` names them). Only the MoE experts are held until each stacked tensor is complete,
so peak memory is about one output shard plus one stacked expert tensor, not the model."""

from __future__ import annotations

import gc
import json
from collections import Counter
from pathlib import Path

import torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from transformers.utils.hub import convert_file_size_to_int

from .errors import ConversionError
from .key_mapping import Op, Piece
from .reading import TensorInfo, TensorReader


def parse_shard_size(value: str | int) -> int:
    """``--max_shard_size`` in bytes ("5GB" = 5·10⁹, "500MiB" = 500·2²⁰; transformers' own parser)."""
    try:
        size = convert_file_size_to_int(value)
    except (ValueError, TypeError):
        raise ConversionError(f"--max_shard_size {value!r} is not a size (e.g. 5GB, 500MB, 2GiB)") from None
    if size <= 0:
        raise ConversionError(f"--max_shard_size must be positive, got {value!r}")
    return size


class ShardWriter:
    """Accumulates tensors and writes safetensors shards of at most ``max_shard_size`` bytes (one tensor larger
    than that gets a shard of its own); ``finish`` names them model-0000i-of-0000N and writes the index."""

    def __init__(self, folder: Path, max_shard_size: int):
        self.folder = folder
        self.max_shard_size = max_shard_size
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + size > self.max_shard_size:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.buffer_bytes += size
        self.total_size += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buffer:
            return
        path = self.folder / f"tmp-shard-{len(self.files) + 1:05d}.safetensors"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.buffer)))
        self.buffer, self.buffer_bytes = {}, 0
        gc.collect()

    def finish(self) -> list[str]:
        """Write the last shard, give the shards their final names (and the index when there are several)."""
        self.flush()
        count = len(self.files)
        if count == 1:
            self.files[0][0].rename(self.folder / SAFE_WEIGHTS_NAME)
            return [SAFE_WEIGHTS_NAME]
        weight_map, names = {}, []
        for i, (path, keys) in enumerate(self.files, start=1):
            name = SAFE_WEIGHTS_NAME.replace(".safetensors", f"-{i:05d}-of-{count:05d}.safetensors")
            path.rename(self.folder / name)
            names.append(name)
            weight_map.update({key: name for key in keys})
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return names


def _grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows to an embedding / LM-head matrix, initialised with the mean of the existing rows."""
    if rows <= tensor.shape[0]:
        return tensor
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)], dim=0)


def _stack(parts: dict[tuple[int, Op], torch.Tensor], num_experts: int) -> torch.Tensor:
    """The stacked expert tensor from every expert's parts (see `Op`)."""
    if (0, Op.STACK_DOWN) in parts:
        return torch.stack([parts[(e, Op.STACK_DOWN)] for e in range(num_experts)])
    return torch.stack([torch.cat([parts[(e, Op.STACK_GATE)], parts[(e, Op.STACK_UP)]]) for e in range(num_experts)])


def stream_weights(
    tensors: dict[str, TensorInfo],
    plan: dict[str, Piece],
    writer: ShardWriter,
    dtype: torch.dtype,
    num_experts: int,
    target_rows: int,
) -> None:
    """Apply the plan to every input tensor, one in memory at a time (experts: until their stack is complete)."""
    reader = TensorReader()
    parts_needed = Counter(piece.target for piece in plan.values() if piece.expert is not None)
    pending: dict[str, dict[tuple[int, Op], torch.Tensor]] = {}
    # Reading file by file keeps one .bin mmap / safetensors handle open at a time.
    order = sorted(plan.values(), key=lambda p: (str(tensors[p.original].file), p.original))
    try:
        for piece in order:
            info = tensors[piece.original]
            # a .bin tensor is an mmap view that may share storage with others: always copy it
            tensor = reader.get(info).to(dtype, copy=info.file.suffix != ".safetensors")
            if piece.expert is None:
                writer.add(piece.target, _grow_rows(tensor, target_rows) if piece.op is Op.GROW_ROWS else tensor)
            else:
                parts = pending.setdefault(piece.target, {})
                parts[(piece.expert, piece.op)] = tensor
                if len(parts) < parts_needed[piece.target]:
                    continue
                writer.add(piece.target, _stack(pending.pop(piece.target), num_experts))
    finally:
        reader.close()
    if pending:  # cannot happen after check_against_plan, but never lose a tensor silently
        raise ConversionError(f"internal: incomplete expert stacks {sorted(pending)}")
