"""Convert released Parrot checkpoints (original LLaVA-style ``parrot_qwen2`` format) to transformers-native Parrot.

The original format (AIDC-AI/Parrot-7B, AIDC-AI/Parrot-14B): a Qwen2 ``config.json`` with the multimodal fields
(``mm_vision_tower``, ``mm_projector_type``, ``num_experts``, ``moe_weight``, ...) at top level; weights named

    model.embed_tokens.weight, model.layers.{i}.*, model.norm.weight, lm_head.weight       (Qwen2 LLM)
    model.mm_projector.{0,2}.{weight,bias}                                                  (Linear, GELU, Linear)
    model.moe_model.gate.weight, model.moe_model.experts.{e}.{gate_proj,up_proj,down_proj}.weight
    model.vision_tower.vision_tower.vision_model.*        (optional: else from the CLIP model at mm_vision_tower)

and a Qwen2 tokenizer without ``<image>``.

Design, for checkpoints larger than half the RAM:
1. the headers of every weight file are read first (shapes only, no data) and checked against the key plan derived
   from a ``ParrotForConditionalGeneration`` built on the meta device: any unexpected, missing or mis-shaped key
   aborts before anything is written, with the original key names in the message;
2. tensors are then streamed one at a time (safetensors via ``safe_open``; pickled ``.bin`` only via
   ``torch.load(weights_only=True, mmap=True)``), renamed, cast and written into safetensors shards of at most
   ``max_shard_size``; only the MoE experts are held until each stacked tensor is complete.
Peak memory is therefore about one output shard plus one stacked expert tensor, not the model.

``verify`` recomputes routing weights, post-MoE image features and last-token logits with an independent plain
torch forward over the *input* checkpoint's tensors (CLIP and Qwen2 from transformers, projector and per-expert
MoE loop written out) and compares them with the converted model loaded from the output folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger("transformers_parrot.conversion")

IMAGE_TOKEN = "<image>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
VISION_PREFIX = "model.vision_tower.vision_tower."
SYSTEM_PROMPT = "You are a helpful assistant."

# Fields of the original config.json that are not Qwen2 fields; everything else of the original that Qwen2Config
# knows goes to text_config.
MULTIMODAL_FIELDS = {
    "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
    "mm_patch_merge_type", "image_aspect_ratio", "num_experts", "moe_hidden_size", "moe_intermediate_size",
    "moe_top_k", "moe_weight", "use_moe", "use_moe_residual", "tokenizer_model_max_length", "tokenizer_padding_side",
}
# Qwen2 fields older configs may carry that a transformers-5 Qwen2Config().to_dict() no longer lists.
LEGACY_QWEN2_FIELDS = {"rope_theta", "rope_scaling", "torch_dtype", "attention_bias"}
NOT_CARRIED_QWEN2_FIELDS = {"architectures", "model_type", "_name_or_path", "transformers_version", "auto_map",
                            "torch_dtype", "dtype", "use_cache"}
SELECT_FEATURE = {"cls_patch": "full", "patch": "default"}

# Non-persistent buffers that old checkpoints sometimes contain: recomputed by the model, reported, not converted.
IGNORABLE_BUFFERS = (re.compile(r"\.rotary_emb\.inv_freq$"), re.compile(r"embeddings\.position_ids$"))

# Prompts for --verify, one per language.
VERIFY_PROMPTS = {
    "en": "What is in the image? Describe the shapes and their colours.",
    "zh": "图片里有什么？请描述形状和颜色。",
    "pt": "O que há na imagem? Descreva as formas e as cores.",
    "ar": "ماذا يوجد في الصورة؟ صف الأشكال وألوانها.",
    "tr": "Resimde ne var? Şekilleri ve renklerini açıklayın.",
    "ru": "Что изображено на картинке? Опишите фигуры и их цвета.",
}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

# Qwen1.5 chat LLMs by (hidden_size, num_hidden_layers): the base model of each released Parrot.
KNOWN_QWEN_BASES = {(4096, 32): "Qwen/Qwen1.5-7B-Chat", (5120, 40): "Qwen/Qwen1.5-14B-Chat",
                    (2048, 24): "Qwen/Qwen1.5-1.8B-Chat", (1024, 24): "Qwen/Qwen1.5-0.5B-Chat"}


class ConversionError(RuntimeError):
    """The input checkpoint cannot be converted faithfully (the message says why, naming keys or fields)."""


class VerificationError(RuntimeError):
    """The converted model does not reproduce the original computation."""


# ---------------------------------------------------------------------------------------------------- input files
def resolve_checkpoint(name_or_path: str | os.PathLike, *, weights: bool = True, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id fetched with ``snapshot_download`` (safetensors preferred,
    pickled ``.bin`` only when the repo has no safetensors; never Python files)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{path} is a file; pass the checkpoint folder")
    from huggingface_hub import HfApi, snapshot_download

    patterns = ["*.json", "*.txt", "*.md", "*.jinja", "*.model", "*.tiktoken"]
    if weights:
        files = HfApi().list_repo_files(str(name_or_path), revision=revision)
        has_safetensors = any(f.endswith(".safetensors") for f in files)
        patterns.append("*.safetensors" if has_safetensors else "*.bin")
    logger.info("downloading %s (%s)", name_or_path, ", ".join(patterns))
    return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))


def resolve_vision_tower(name: str, *, weights: bool) -> Path:
    """The CLIP tower folder: a local folder, a Hub id, or (released checkpoints name the training machine's path,
    e.g. ``/playground/models/clip-vit-large-patch14-336``) the OpenAI Hub repo of that folder's name."""
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return path
    looks_local = str(name).startswith(("/", ".", "~")) or str(name).count("/") > 1
    if looks_local:
        if path.name.startswith("clip-vit-"):
            repo = f"openai/{path.name}"
            logger.warning("mm_vision_tower %s is a path of the training machine: using %s", name, repo)
            return resolve_checkpoint(repo, weights=weights)
        raise ConversionError(f"vision tower {name!r} is not a local folder: pass --vision_tower")
    return resolve_checkpoint(str(name), weights=weights)


@dataclass
class TensorInfo:
    """Where one input tensor lives: file, name inside the file, shape."""

    file: Path
    name: str
    shape: tuple[int, ...]
    dtype: str


def _weight_files(folder: Path, what: str) -> list[Path]:
    """The weight files of a folder: from a safetensors / .bin index when there is one, else every shard."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise ConversionError(f"{what}: {index_name} names files that are not in {folder}: {missing}")
            return [folder / f for f in files]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        files = sorted(p for p in folder.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if not files:
        raise ConversionError(f"{what}: no *.safetensors or pytorch_model*.bin weight files in {folder}")
    return files


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: never unpickle code from a checkpoint; mmap: tensors stay on disk until touched.
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict):
        raise ConversionError(f"{path} does not hold a state dict")
    return state


def read_headers(folder: Path, what: str) -> dict[str, TensorInfo]:
    """Name → TensorInfo for every tensor of the folder's weight files, reading no tensor data."""
    from safetensors import safe_open

    infos: dict[str, TensorInfo] = {}
    for file in _weight_files(folder, what):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    sl = handle.get_slice(name)
                    entry = TensorInfo(file, name, tuple(sl.get_shape()), str(sl.get_dtype()))
                    if name in infos:
                        raise ConversionError(f"{what}: tensor {name!r} is in both {infos[name].file.name} and {file.name}")
                    infos[name] = entry
        else:
            state = _load_bin(file)
            for name, tensor in state.items():
                if name in infos:
                    raise ConversionError(f"{what}: tensor {name!r} is in both {infos[name].file.name} and {file.name}")
                infos[name] = TensorInfo(file, name, tuple(tensor.shape), str(tensor.dtype))
            del state
    return infos


class TensorReader:
    """Reads tensors file by file, keeping at most one file open (a .bin file's mmap'd dict, or a safe_open)."""

    def __init__(self):
        self._file: Path | None = None
        self._handle = None
        self._state = None

    def get(self, info: TensorInfo) -> torch.Tensor:
        if info.file != self._file:
            self.close()
            self._file = info.file
            if info.file.suffix == ".safetensors":
                from safetensors import safe_open

                self._handle = safe_open(str(info.file), framework="pt")
                self._handle.__enter__()
            else:
                self._state = _load_bin(info.file)
        if self._handle is not None:
            return self._handle.get_tensor(info.name)
        return self._state[info.name]

    def close(self):
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
        self._file = self._handle = self._state = None


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class OriginalCheckpoint:
    """Everything read from the input: folders, the original config and the tensor headers by original name."""

    folder: Path
    config: dict
    vision_folder: Path | None
    tensors: dict[str, TensorInfo]
    ignored: list[str] = field(default_factory=list)  # keys deliberately not converted, reported
    vision_source: str = "checkpoint"


def load_original_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"no config.json in {folder}")
    config = json.loads(path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type != "parrot_qwen2":
        if model_type == "parrot":
            raise ConversionError(f"{folder} is already a transformers-native Parrot checkpoint")
        logger.warning("config.json model_type is %r, expected 'parrot_qwen2'; converting anyway", model_type)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size", "num_experts") if k not in config]
    if missing:
        raise ConversionError(f"config.json of {folder} lacks {missing}: not an original Parrot checkpoint")
    return config


def text_config_from_original(original: dict) -> dict:
    """The Qwen2 part of the original config (all Qwen2Config fields at top level)."""
    from transformers import Qwen2Config

    known = set(Qwen2Config().to_dict()) | LEGACY_QWEN2_FIELDS
    text = {k: v for k, v in original.items() if k in known and k not in NOT_CARRIED_QWEN2_FIELDS}
    text["model_type"] = "qwen2"
    return text


def multimodal_settings(original: dict) -> dict:
    """Checks the multimodal fields and returns the ParrotConfig keyword arguments they map to."""
    projector = original.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ConversionError(
            f"mm_projector_type={projector!r} is not supported: Parrot's projector is 'mlp2x_gelu' (Linear, GELU, Linear)"
        )
    merge = original.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ConversionError(f"mm_patch_merge_type={merge!r} is not supported (only 'flat')")
    feature = original.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise ConversionError(f"mm_vision_select_feature={feature!r} is not supported ('cls_patch' or 'patch')")
    aspect = original.get("image_aspect_ratio", "square")
    if aspect not in ("pad", "square", None):
        raise ConversionError(f"image_aspect_ratio={aspect!r} is not supported ('pad' or 'square')")
    hidden = original["hidden_size"]
    moe_hidden = original.get("moe_hidden_size", hidden)
    if moe_hidden != hidden:
        raise ConversionError(f"moe_hidden_size={moe_hidden} differs from the LLM hidden_size={hidden}")
    use_moe = bool(original.get("use_moe", True))
    num_experts = int(original["num_experts"])
    # The original MoE adds moe_weight * X only when use_moe_residual; its module default for moe_weight is 1.0.
    if "moe_weight" not in original:
        logger.warning("config.json has no moe_weight: using the original module's default 1.0")
    residual = float(original.get("moe_weight", 1.0)) if original.get("use_moe_residual", True) else 0.0
    if use_moe and feature != "cls_patch":
        raise ConversionError("use_moe=True needs mm_vision_select_feature='cls_patch' (the CLS token is the router query)")
    top_k = original.get("moe_top_k")
    if top_k is not None and int(top_k) != num_experts:
        # The original forward ignores moe_top_k and always mixes all experts: the faithful conversion is dense.
        logger.warning("moe_top_k=%s < num_experts=%s is ignored by the original forward (always dense); the "
                       "converted model is dense too (moe_top_k=None)", top_k, num_experts)
    return dict(
        vision_feature_layer=int(original.get("mm_vision_select_layer", -1)),
        vision_feature_select_strategy=SELECT_FEATURE[feature],
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        num_experts=num_experts,
        moe_intermediate_size=int(original.get("moe_intermediate_size", hidden)),
        moe_residual_weight=residual,
        use_moe=use_moe,
        moe_top_k=None,
        do_pad=aspect == "pad",
    )


def load_vision_config(vision_folder: Path):
    from transformers import CLIPVisionConfig

    raw = json.loads((vision_folder / "config.json").read_text(encoding="utf-8"))
    if raw.get("model_type") == "clip":
        vision = dict(raw.get("vision_config") or {})
        vision = CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    elif raw.get("model_type") == "clip_vision_model":
        vision = CLIPVisionConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures")})
    else:
        raise ConversionError(f"{vision_folder}/config.json is not a CLIP model (model_type={raw.get('model_type')!r})")
    return vision


def image_processor_settings(vision_folder: Path | None, do_pad: bool) -> dict:
    """The CLIP preprocessor config of the vision tower, as keyword arguments of the LLaVA (pad + CLIP) processor."""
    settings: dict[str, Any] = {"do_pad": do_pad}
    path = vision_folder / "preprocessor_config.json" if vision_folder else None
    if path is None or not path.is_file():
        logger.warning("no preprocessor_config.json for the vision tower: using CLIP ViT-L/14-336 preprocessing")
        return settings
    raw = json.loads(path.read_text(encoding="utf-8"))
    size = raw.get("size")
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = raw.get("crop_size")
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    for key, value in (("size", size), ("crop_size", crop)):
        if value is not None:
            settings[key] = value
    for key in ("resample", "do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
                "image_mean", "image_std", "do_convert_rgb"):
        if key in raw:
            settings[key] = raw[key]
    return settings


# ---------------------------------------------------------------------------------------------------- key plan
_LLM_PATTERNS = (
    (re.compile(r"^model\.language_model\.(embed_tokens\..+|layers\..+|norm\..+)$"), r"model.\1"),
    (re.compile(r"^lm_head\.weight$"), "lm_head.weight"),
    (re.compile(r"^model\.multi_modal_projector\.linear_1\.(weight|bias)$"), r"model.mm_projector.0.\1"),
    (re.compile(r"^model\.multi_modal_projector\.linear_2\.(weight|bias)$"), r"model.mm_projector.2.\1"),
    (re.compile(r"^model\.moe\.gate\.weight$"), "model.moe_model.gate.weight"),
    (re.compile(r"^model\.vision_tower\.(.+)$"), VISION_PREFIX + r"vision_model.\1"),
)
EXPERT_KEY = re.compile(r"^model\.moe_model\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


@dataclass
class Piece:
    """One original tensor and where it goes: a target key, plus (for experts) the expert index and projection."""

    original: str
    target: str
    shape: tuple[int, ...]  # expected shape in the original layout
    expert: int | None = None
    proj: str | None = None


def build_plan(model_state: dict[str, torch.Tensor], num_experts: int, vocab_rows: int, tied: bool) -> dict[str, Piece]:
    """Original key → Piece for every tensor the converted model needs (from its meta-device state dict).

    ``vocab_rows`` is the number of embedding rows in the input (the target may have more after adding <image>).
    """
    plan: dict[str, Piece] = {}
    for target, tensor in model_state.items():
        shape = tuple(tensor.shape)
        if target == "model.moe.experts.gate_up_proj":
            _, two_i, d = shape
            for e in range(num_experts):
                for proj in ("gate_proj", "up_proj"):
                    key = f"model.moe_model.experts.{e}.{proj}.weight"
                    plan[key] = Piece(key, target, (two_i // 2, d), e, proj)
            continue
        if target == "model.moe.experts.down_proj":  # stacked input-major (E, I, D); the original is (D, I)
            _, i, d = shape
            for e in range(num_experts):
                key = f"model.moe_model.experts.{e}.down_proj.weight"
                plan[key] = Piece(key, target, (d, i), e, "down_proj")
            continue
        if target == "lm_head.weight" and tied:
            continue
        for pattern, replacement in _LLM_PATTERNS:
            if pattern.match(target):
                original = pattern.sub(replacement, target)
                break
        else:
            raise ConversionError(f"internal: no original name for converted key {target!r}")
        if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            shape = (vocab_rows,) + shape[1:]
        plan[original] = Piece(original, target, shape)
    return plan


def _external_vision_tensors(vision_folder: Path) -> tuple[dict[str, TensorInfo], list[str]]:
    """The vision tower's tensors under their original in-checkpoint names, plus the names left out (CLIP text
    tower, projections, non-persistent buffers) for the report."""
    infos = read_headers(vision_folder, f"vision tower {vision_folder}")
    prefixed = any(k.startswith("vision_model.") for k in infos)
    mapped, skipped = {}, []
    for name, info in infos.items():
        if prefixed:
            if not name.startswith("vision_model."):
                skipped.append(name)  # text_model.*, visual_projection, text_projection, logit_scale
                continue
            inner = name
        else:  # a CLIPVisionModel saved by transformers 5 (no vision_model. level)
            inner = "vision_model." + name
        mapped[VISION_PREFIX + inner] = info
    return mapped, skipped


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
        problems.append(f"{len(unexpected)} unexpected key(s) (not part of Parrot; refusing to drop them): "
                        + ", ".join(sorted(unexpected)))
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing))
    if wrong:
        problems.append(f"{len(wrong)} key(s) with the wrong shape: " + "; ".join(sorted(wrong)))
    if problems:
        raise ConversionError("the checkpoint does not match the Parrot layout:\n  " + "\n  ".join(problems))
    return ignored


# ---------------------------------------------------------------------------------------------------- writing
def parse_size(value: str | int) -> int:
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", value, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot parse size {value!r} (e.g. 5GB, 500MB)")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(number * scale)


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
        self.flush()
        count = len(self.files)
        if count == 1:
            path, _ = self.files[0]
            path.rename(self.folder / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (path, keys) in enumerate(self.files, start=1):
            name = f"model-{i:05d}-of-{count:05d}.safetensors"
            path.rename(self.folder / name)
            names.append(name)
            weight_map.update({key: name for key in keys})
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return names


def _grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows to an embedding / LM-head matrix, initialised with the mean of the existing rows."""
    if rows <= tensor.shape[0]:
        return tensor
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)], dim=0)


def stream_weights(source: OriginalCheckpoint, plan: dict[str, Piece], writer: ShardWriter, dtype: torch.dtype,
                   num_experts: int, target_rows: int, progress: Callable[[str], None] | None = None) -> None:
    """Rename, cast and write every planned tensor, one input tensor in memory at a time (experts: until stacked)."""
    reader = TensorReader()
    pending: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    needed = {"model.moe.experts.gate_up_proj": 2 * num_experts, "model.moe.experts.down_proj": num_experts}
    # Reading file by file keeps one .bin mmap / safetensors handle open at a time.
    order = sorted(plan.values(), key=lambda p: (str(source.tensors[p.original].file), p.original))
    try:
        for piece in order:
            info = source.tensors[piece.original]
            tensor = reader.get(info)
            # a .bin tensor is an mmap view that may share storage with others: always copy it
            tensor = tensor.to(dtype, copy=info.file.suffix != ".safetensors")
            if piece.expert is None:
                if piece.target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
                    tensor = _grow_rows(tensor, target_rows)
                writer.add(piece.target, tensor)
                if progress:
                    progress(piece.target)
                continue
            parts = pending.setdefault(piece.target, {})
            parts[(piece.expert, piece.proj)] = tensor
            if len(parts) == needed[piece.target]:
                if piece.target.endswith("gate_up_proj"):
                    stacked = torch.stack([torch.cat([parts[(e, "gate_proj")], parts[(e, "up_proj")]], dim=0)
                                           for e in range(num_experts)])
                else:
                    stacked = torch.stack([parts[(e, "down_proj")].T for e in range(num_experts)])
                del pending[piece.target]
                parts.clear()
                writer.add(piece.target, stacked)
                if progress:
                    progress(piece.target)
    finally:
        reader.close()
    if pending:  # cannot happen after check_against_plan, but never lose a tensor silently
        raise ConversionError(f"internal: incomplete expert stacks {sorted(pending)}")


# ---------------------------------------------------------------------------------------------------- convert
@dataclass
class ConversionResult:
    output: Path
    config: Any
    image_token_id: int
    resized_vocab: bool
    shards: list[str]
    ignored: list[str]
    vision_source: str


def _meta_model(config):
    from .modeling_parrot import ParrotForConditionalGeneration

    with torch.device("meta"):
        return ParrotForConditionalGeneration(config)


def prepare_tokenizer(folder: Path, chat_template: str, model_max_length: int | None):
    """The original tokenizer with ``<image>`` added as a special token (existing one reused)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    for token in ("<|im_start|>", IM_END, ENDOFTEXT):
        if token not in tokenizer.get_vocab():
            raise ConversionError(f"the tokenizer in {folder} has no {token}: not a Qwen2 ChatML tokenizer")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False, lstrip=False, rstrip=False)],
                             special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = ENDOFTEXT
    tokenizer.chat_template = chat_template
    if model_max_length:
        tokenizer.model_max_length = int(model_max_length)
    return tokenizer


def _output_dtype(name: str, original: dict, tensors: dict[str, TensorInfo]) -> torch.dtype:
    if name != "auto":
        if name not in DTYPES:
            raise ConversionError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
        return DTYPES[name]
    declared = original.get("torch_dtype") or original.get("dtype")
    if isinstance(declared, str) and declared in DTYPES:
        return DTYPES[declared]
    info = tensors.get("model.embed_tokens.weight")
    if info is not None:
        for key, dtype in (("BF16", torch.bfloat16), ("F16", torch.float16), ("bfloat16", torch.bfloat16),
                           ("float16", torch.float16)):
            if key in info.dtype:
                return dtype
    return torch.float32


def convert(input_path: str | os.PathLike, output: str | os.PathLike, *, vision_tower: str | None = None,
            dtype: str = "auto", max_shard_size: str | int = "5GB", overwrite: bool = False,
            model_name: str | None = None, license: str | None = None, results: str | os.PathLike | None = None,
            source_repo: str | None = None) -> ConversionResult:
    """Convert an original Parrot checkpoint folder (or Hub id) into a transformers-native folder."""
    from transformers import GenerationConfig

    from .configuration_parrot import ParrotConfig
    from .modeling_parrot import ParrotModel
    from .processing_parrot import DEFAULT_CHAT_TEMPLATE, ParrotProcessor, default_image_processor

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConversionError(f"{output} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(output)
    folder = resolve_checkpoint(input_path)
    original = load_original_config(folder)
    mm = multimodal_settings(original)
    do_pad = mm.pop("do_pad")

    tensors = read_headers(folder, f"checkpoint {folder}")
    has_vision = any(k.startswith(VISION_PREFIX) for k in tensors)
    tower_name = vision_tower or original.get("mm_vision_tower")
    ignored: list[str] = []
    if vision_tower is not None or not has_vision:
        if not tower_name:
            raise ConversionError("the checkpoint has no vision weights and config.json has no mm_vision_tower; "
                                  "pass --vision_tower")
        vision_folder = resolve_vision_tower(tower_name, weights=True)
        if has_vision:
            inside = sorted(k for k in tensors if k.startswith(VISION_PREFIX))
            logger.warning("--vision_tower given: replacing the %d vision tensors of the checkpoint", len(inside))
            ignored += [f"{k} (replaced by --vision_tower)" for k in inside]
            tensors = {k: v for k, v in tensors.items() if not k.startswith(VISION_PREFIX)}
        vision_tensors, skipped = _external_vision_tensors(vision_folder)
        ignored += [f"{vision_folder.name}:{k} (not part of the vision tower)" for k in skipped]
        tensors.update(vision_tensors)
        vision_source = str(tower_name)
    else:
        vision_source = "checkpoint"
        vision_folder = None
        if tower_name:
            try:  # config and preprocessor of the tower only, no weights
                vision_folder = resolve_vision_tower(tower_name, weights=False)
            except Exception as err:  # noqa: BLE001 - reported below
                raise ConversionError(
                    f"cannot read the vision tower config from mm_vision_tower={tower_name!r} ({err}); pass "
                    "--vision_tower with a local CLIP folder (config.json + preprocessor_config.json)"
                ) from err
        else:
            raise ConversionError("config.json has no mm_vision_tower: pass --vision_tower for the CLIP config")
    vision_config = load_vision_config(vision_folder)
    if original.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise ConversionError(f"mm_hidden_size={original['mm_hidden_size']} differs from the vision tower's "
                              f"hidden_size={vision_config.hidden_size}")

    out_dtype = _output_dtype(dtype, original, tensors)
    tokenizer = prepare_tokenizer(folder, DEFAULT_CHAT_TEMPLATE, original.get("tokenizer_model_max_length"))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    embed_info = tensors.get("model.embed_tokens.weight")
    vocab_rows = embed_info.shape[0] if embed_info else int(original["vocab_size"])
    target_rows = max(vocab_rows, image_token_id + 1, len(tokenizer))
    resized = target_rows > vocab_rows

    text = text_config_from_original(original)
    text["vocab_size"] = target_rows
    text["pad_token_id"] = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    tied = bool(original.get("tie_word_embeddings", False))
    text["tie_word_embeddings"] = tied
    image_processor = default_image_processor(**image_processor_settings(vision_folder, do_pad))
    seq_len = (vision_config.image_size // vision_config.patch_size) ** 2 + (
        1 if mm["vision_feature_select_strategy"] == "full" else 0)
    processor = ParrotProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=seq_len)
    config = ParrotConfig(vision_config=vision_config.to_dict(), text_config=text, image_token_id=image_token_id,
                          image_seq_length=seq_len, assistant_header_ids=processor.assistant_header_ids,
                          tie_word_embeddings=tied, **mm)
    config.dtype = out_dtype

    model = _meta_model(config)
    plan = build_plan(model.state_dict(), config.num_experts, vocab_rows, tied)
    ignored += check_against_plan(tensors, plan, tied)
    for name in ignored:
        logger.info("not converted: %s", name)

    output.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(output, parse_size(max_shard_size))
    source = OriginalCheckpoint(folder, original, vision_folder, tensors, ignored, vision_source)
    stream_weights(source, plan, writer, out_dtype, config.num_experts, target_rows)
    shards = writer.finish()

    # config (+ configuration_parrot.py), modeling_parrot.py, auto_map for every Auto class Parrot supports
    from transformers.dynamic_module_utils import custom_object_save

    custom_object_save(model, output, config=config)
    module = ParrotModel.__module__.rsplit(".", 1)[-1]
    config.auto_map = {
        **(getattr(config, "auto_map", None) or {}),
        "AutoConfig": f"{type(config).__module__.rsplit('.', 1)[-1]}.ParrotConfig",
        "AutoModel": f"{module}.ParrotModel",
        "AutoModelForImageTextToText": f"{module}.ParrotForConditionalGeneration",
        "AutoModelForVision2Seq": f"{module}.ParrotForConditionalGeneration",
    }
    config.architectures = ["ParrotForConditionalGeneration"]
    config.save_pretrained(output)  # also writes the 4.x RoPE fields (ParrotConfig.to_json_string)
    processor.save_pretrained(output)
    generation = GenerationConfig(
        bos_token_id=original.get("bos_token_id"),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )
    generation.save_pretrained(output)
    del model

    from .modelcard import write_model_card

    write_model_card(
        output, config=config, model_name=model_name or _default_name(input_path),
        license=license or _input_license(folder), base_models=_base_models(original, vision_tower),
        results=results, converted_from=source_repo or _source_repo(input_path),
    )
    return ConversionResult(output, config, image_token_id, resized, shards, ignored, vision_source)


def _default_name(input_path) -> str:
    return Path(str(input_path).rstrip("/")).name or "Parrot"


def _source_repo(input_path) -> str | None:
    text = str(input_path)
    return None if Path(text).expanduser().exists() else text


def _input_license(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(readme).data.to_dict().get("license")
    except Exception:  # noqa: BLE001 - a malformed card only loses the license
        return None


def _base_models(original: dict, vision_tower: str | None) -> list[str]:
    bases = []
    llm = KNOWN_QWEN_BASES.get((original.get("hidden_size"), original.get("num_hidden_layers")))
    if llm:
        bases.append(llm)
    tower = vision_tower or original.get("mm_vision_tower")
    if tower and re.fullmatch(r"[\w.-]+/[\w.-]+", str(tower)) and not Path(str(tower)).exists():
        bases.append(str(tower))
    elif tower and Path(str(tower)).name.startswith("clip-vit-"):
        bases.append(f"openai/{Path(str(tower)).name}")  # a local copy of OpenAI's tower
    return bases


# ---------------------------------------------------------------------------------------------------- verify
@dataclass
class VerifyReport:
    max_diffs: dict[str, float]
    tolerances: dict[str, float]
    top1_agree: int
    prompts: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def _expand_to_square(image, fill: tuple[int, int, int]):
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _reference_outputs(folder: Path, original: dict, vision_tensors: dict[str, TensorInfo] | None,
                       vision_folder: Path, weight_dtype: torch.dtype, compute_dtype: torch.dtype,
                       image, prompts: dict[str, str]) -> dict[str, dict[str, torch.Tensor]]:
    """Routing weights, post-MoE features and last-token logits computed straight from the original tensors:
    transformers' CLIPVisionModel and Qwen2ForCausalLM loaded from the original keys, projector and the per-expert
    MoE loop written out from parrot-notes §1, prompt built by hand (ChatML), image padded by hand (§2)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, Qwen2Config, Qwen2ForCausalLM
    from transformers import CLIPVisionModel

    tensors = read_headers(folder, "checkpoint")
    reader = TensorReader()

    def load(info: TensorInfo) -> torch.Tensor:
        # same rounding as the converted weights, then the comparison dtype
        return reader.get(info).to(weight_dtype).to(compute_dtype)

    # vision tower
    if vision_tensors is None:
        vision_tensors = {k: v for k, v in tensors.items() if k.startswith(VISION_PREFIX)}
    vision_config = load_vision_config(vision_folder)
    with torch.device("meta"):
        clip = CLIPVisionModel(vision_config)
    clip_keys = set(clip.state_dict())
    state = {}
    for name, info in vision_tensors.items():
        inner = name[len(VISION_PREFIX):]
        key = inner if inner in clip_keys else inner[len("vision_model."):]
        if key in clip_keys:
            state[key] = load(info)
    clip.load_state_dict(state, strict=True, assign=True)
    clip = clip.to(compute_dtype).eval()
    # non-persistent buffers were never materialised on the meta device
    for module in clip.modules():
        if hasattr(module, "position_ids") and module.position_ids.is_meta:
            module.register_buffer("position_ids", torch.arange(module.num_positions).expand((1, -1)),
                                   persistent=False)

    proc_raw = json.loads((vision_folder / "preprocessor_config.json").read_text(encoding="utf-8")) \
        if (vision_folder / "preprocessor_config.json").is_file() else {}
    clip_processor = CLIPImageProcessor(**{k: v for k, v in proc_raw.items()
                                           if k not in ("image_processor_type", "feature_extractor_type",
                                                        "processor_class")})
    picture = image.convert("RGB")
    if original.get("image_aspect_ratio") == "pad":
        picture = _expand_to_square(picture, tuple(int(x * 255) for x in clip_processor.image_mean))
    pixel_values = torch.as_tensor(clip_processor(picture, return_tensors="np")["pixel_values"]).to(compute_dtype)
    with torch.no_grad():
        hidden = clip(pixel_values, output_hidden_states=True).hidden_states[original.get("mm_vision_select_layer", -1)]
    if original.get("mm_vision_select_feature", "patch") == "patch":
        hidden = hidden[:, 1:]
    del clip, state

    # projector
    w0, b0 = load(tensors["model.mm_projector.0.weight"]), load(tensors["model.mm_projector.0.bias"])
    w2, b2 = load(tensors["model.mm_projector.2.weight"]), load(tensors["model.mm_projector.2.bias"])
    with torch.no_grad():
        projected = torch.nn.functional.linear(
            torch.nn.functional.gelu(torch.nn.functional.linear(hidden, w0, b0)), w2, b2)[0]  # (L, D)

    # MoE weights, per expert as in the original
    num_experts = int(original["num_experts"])
    gate = load(tensors["model.moe_model.gate.weight"])
    experts = [{p: load(tensors[f"model.moe_model.experts.{e}.{p}.weight"]) for p in ("gate_proj", "up_proj", "down_proj")}
               for e in range(num_experts)]

    # LLM
    qwen_kwargs = {k: v for k, v in original.items() if k not in ("model_type", "architectures", "auto_map")}
    qwen_config = Qwen2Config(**qwen_kwargs)
    with torch.device("meta"):
        llm = Qwen2ForCausalLM(qwen_config)
    llm_state = {}
    for key in llm.state_dict():
        if key == "lm_head.weight" and qwen_config.tie_word_embeddings and key not in tensors:
            continue
        llm_state[key] = load(tensors[key])
    llm.load_state_dict(llm_state, strict=not qwen_config.tie_word_embeddings, assign=True)
    if qwen_config.tie_word_embeddings:
        llm.tie_weights()
    rotary = getattr(llm.model, "rotary_emb", None)
    if rotary is not None and getattr(rotary, "inv_freq", None) is not None and rotary.inv_freq.is_meta:
        fresh = type(rotary)(config=qwen_config)
        llm.model.rotary_emb = fresh
    llm = llm.to(compute_dtype).eval()
    reader.close()

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    embed = llm.get_input_embeddings()
    moe_weight = float(original.get("moe_weight", 1.0))
    results = {}
    for lang, question in prompts.items():
        before = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
        after = f"\n{question}<|im_end|>\n<|im_start|>assistant\n"
        ids_before = tokenizer(before, add_special_tokens=False, return_tensors="pt").input_ids[0]
        ids_after = tokenizer(after, add_special_tokens=False, return_tensors="pt").input_ids[0]
        with torch.no_grad():
            text_embeds = embed(torch.cat([ids_before, ids_after]))  # every prompt token guides the router
            features = projected
            routing = None
            if original.get("use_moe", True):
                cls = features[0:1]
                scores = cls @ text_embeds.T / math.sqrt(features.shape[-1])
                attended = torch.softmax(scores, dim=-1) @ text_embeds
                routing = torch.softmax(attended @ gate.T, dim=-1)[0]  # (E,)
                mixed = torch.zeros_like(features)
                for e, w in enumerate(experts):
                    act = torch.nn.functional.silu(features @ w["gate_proj"].T) * (features @ w["up_proj"].T)
                    mixed = mixed + routing[e] * (act @ w["down_proj"].T)
                if original.get("use_moe_residual", True):
                    mixed = mixed + moe_weight * features
                features = mixed
            inputs = torch.cat([embed(ids_before), features, embed(ids_after)])[None]
            logits = llm(inputs_embeds=inputs).logits[0, -1]
        results[lang] = {"routing": routing, "features": features, "logits": logits,
                         "ids_before": ids_before, "ids_after": ids_after}
    del llm, experts
    gc.collect()
    return results


def verify(input_path: str | os.PathLike, output: str | os.PathLike, *, vision_tower: str | None = None,
           compute_dtype: str = "auto", image=None, prompts: dict[str, str] | None = None,
           tolerance: float | None = None, log: Callable[[str], None] = print) -> VerifyReport:
    """Compare the converted model in ``output`` with an independent forward over the input checkpoint.

    The reference runs first and is freed before the converted model is loaded, so peak memory is about one model in
    ``compute_dtype``. Differences are measured relative to the reference's largest magnitude."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .assets import bundled_image

    output = Path(output)
    folder = resolve_checkpoint(input_path)
    original = load_original_config(folder)
    tensors = read_headers(folder, "checkpoint")
    has_vision = any(k.startswith(VISION_PREFIX) for k in tensors)
    tower = vision_tower or original.get("mm_vision_tower")
    if not tower:
        raise ConversionError("config.json has no mm_vision_tower: pass --vision_tower")
    vision_folder = resolve_vision_tower(tower, weights=vision_tower is not None or not has_vision)
    vision_tensors = None
    if vision_tower is not None or not has_vision:
        vision_tensors, _ = _external_vision_tensors(vision_folder)

    converted_config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    weight_dtype = DTYPES.get(str(converted_config.get("dtype") or converted_config.get("torch_dtype")), torch.float32)
    if compute_dtype == "auto":
        n_params = sum(math.prod(i.shape) for i in tensors.values())
        total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        compute = torch.float32 if n_params * 4 < 0.45 * total_ram else weight_dtype
    else:
        compute = DTYPES[compute_dtype]
    if tolerance is None:
        tolerance = 1e-4 if compute == torch.float32 else 3e-2
    image = image if image is not None else bundled_image()
    prompts = prompts or VERIFY_PROMPTS
    log(f"verify: reference forward from {folder} ({compute}, weights rounded to {weight_dtype})")
    reference = _reference_outputs(folder, original, vision_tensors, vision_folder, weight_dtype, compute, image, prompts)

    log(f"verify: converted model from {output}")
    model = AutoModelForImageTextToText.from_pretrained(str(output), dtype=compute).eval()
    processor = AutoProcessor.from_pretrained(str(output))
    vocab = None
    max_diffs = {"routing_weights": 0.0, "image_features": 0.0, "last_token_logits": 0.0}
    failures: list[str] = []
    top1 = 0
    image_token_id = model.config.image_token_id
    for lang, question in prompts.items():
        ref = reference[lang]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=[image], text=text, return_tensors="pt")
        ids = inputs["input_ids"][0]
        text_ids = ids[ids != image_token_id]
        expected_ids = torch.cat([ref["ids_before"], ref["ids_after"]])
        if not torch.equal(text_ids, expected_ids):
            failures.append(f"[{lang}] prompt tokens differ from the original ChatML prompt")
        with torch.no_grad():
            out = model(**inputs, output_router_logits=True)
        vocab = ref["logits"].shape[-1]
        pairs = [("image_features", out.image_hidden_states[0].float(), ref["features"].float()),
                 ("last_token_logits", out.logits[0, -1, :vocab].float(), ref["logits"].float())]
        if ref["routing"] is not None:
            pairs.insert(0, ("routing_weights", torch.softmax(out.router_logits[0].float(), -1), ref["routing"].float()))
        for name, got, want in pairs:
            if got.shape != want.shape:
                failures.append(f"[{lang}] {name}: shape {tuple(got.shape)} != reference {tuple(want.shape)}")
                continue
            diff = (got - want).abs().max().item()
            scale = max(want.abs().max().item(), 1.0) if name != "routing_weights" else 1.0
            max_diffs[name] = max(max_diffs[name], diff)
            if not diff <= tolerance * scale:
                failures.append(f"[{lang}] {name}: max |diff| {diff:.3e} > {tolerance:.1e} x {scale:.3g}")
        top1 += int(out.logits[0, -1, :vocab].argmax() == ref["logits"].argmax())
        log(f"  [{lang}] routing {[round(float(x), 4) for x in (ref['routing'] if ref['routing'] is not None else [])]}")
    del model
    report = VerifyReport(max_diffs, {"relative": tolerance}, top1, len(prompts), failures)
    for name, value in max_diffs.items():
        log(f"verify: max |diff| {name}: {value:.3e}")
    log(f"verify: last-token argmax agrees on {top1}/{len(prompts)} prompts")
    return report


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parrot-convert",
        description="Convert an original Parrot checkpoint (AIDC-AI/Parrot-7B style) to transformers-native Parrot.",
    )
    parser.add_argument("--input", required=True, help="original checkpoint: local folder or Hub repo id")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--vision_tower", default=None,
                        help="CLIP vision tower (folder or Hub id) overriding mm_vision_tower and any vision weights "
                             "inside the checkpoint")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="dtype of the converted weights (auto: the input's torch_dtype)")
    parser.add_argument("--max_shard_size", default="5GB", help="largest output safetensors shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--verify", action="store_true",
                        help="compare the converted model with an independent forward over the input tensors")
    parser.add_argument("--verify_only", action="store_true", help="only run the verification of an existing output")
    parser.add_argument("--verify_dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="compute dtype of the verification (auto: float32 when it fits in RAM)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative tolerance of --verify (default 1e-4 in float32, 3e-2 otherwise)")
    parser.add_argument("--model_name", default=None, help="model name in the card (default: the input's name)")
    parser.add_argument("--license", default=None, help="license for the card (default: the input card's)")
    parser.add_argument("--results", default=None,
                        help="evaluation results.json or model_index.json (parrot-eval) for the card's model-index")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO", help="upload the output folder to this repo")
    parser.add_argument("--private", action="store_true", help="create the --push_to_hub repo as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if not args.verify_only:
            result = convert(args.input, args.output, vision_tower=args.vision_tower, dtype=args.dtype,
                             max_shard_size=args.max_shard_size, overwrite=args.overwrite, model_name=args.model_name,
                             license=args.license, results=args.results)
            print(f"converted {args.input} -> {result.output} ({len(result.shards)} shard(s), <image> id "
                  f"{result.image_token_id}, {'resized' if result.resized_vocab else 'spare'} embedding row, "
                  f"vision from {result.vision_source})")
            for name in result.ignored:
                print(f"  not converted: {name}")
        if args.verify or args.verify_only:
            report = verify(args.input, args.output, vision_tower=args.vision_tower, compute_dtype=args.verify_dtype,
                            tolerance=args.tolerance)
            if not report.ok:
                print("VERIFICATION FAILED:", file=sys.stderr)
                for failure in report.failures:
                    print(f"  {failure}", file=sys.stderr)
                return 1
            print("verification passed: routing weights, image features and last-token logits match")
    except (ConversionError, VerificationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, private=args.private, exist_ok=True)
        api.upload_folder(folder_path=str(args.output), repo_id=args.push_to_hub,
                          commit_message=f"Convert {args.input} to transformers-native Parrot")
        print(f"pushed {args.output} to https://huggingface.co/{args.push_to_hub}")
    return 0


__all__ = ["convert", "verify", "main", "ConversionError", "VerificationError", "build_plan", "VERIFY_PROMPTS"]
