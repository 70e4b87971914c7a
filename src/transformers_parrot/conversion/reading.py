"""Reading the inputs: the original ``config.json``, tensor headers and tensors of the weight files, and the CLIP
vision tower (from the checkpoint or from a separate folder / Hub repo).

Tensor headers are read without tensor data (safetensors headers; pickled ``.bin`` files only through
``torch.load(weights_only=True, mmap=True)``), so the key check runs before anything is loaded or written. Every
unreadable file (corrupt or incomplete download, not JSON) is a ConversionError naming the file.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME, logging

from .errors import ConversionError
from .hub import hub_offline, looks_local, resolve_checkpoint

logger = logging.get_logger(__name__)

# Where the original checkpoint keeps the CLIP tower's weights (`vision_model.*` below it).
VISION_PREFIX = "model.vision_tower.vision_tower."
# What reading a damaged weight file raises (safetensors, torch.load and the file system).
_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; ConversionError when it is missing or not valid JSON."""
    if not path.is_file():
        raise ConversionError(f"{what}: no {path.name} in {path.parent}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConversionError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{what}: {path} holds a {type(value).__name__}, not a JSON object")
    return value


def load_original_config(folder: Path) -> dict:
    """The original ``config.json``, checked to be a Parrot (``parrot_qwen2``) checkpoint."""
    config = read_json(folder / "config.json", "checkpoint")
    model_type = config.get("model_type")
    if model_type != "parrot_qwen2":
        if model_type == "parrot":
            raise ConversionError(f"{folder} is already a transformers-native Parrot checkpoint")
        logger.warning("config.json model_type is %r, expected 'parrot_qwen2'; converting anyway", model_type)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size", "num_experts") if k not in config]
    if missing:
        raise ConversionError(f"config.json of {folder} lacks {missing}: not an original Parrot checkpoint")
    return config


@dataclass
class TensorInfo:
    """Where one input tensor lives: file, name inside the file, shape and dtype name."""

    file: Path
    name: str
    shape: tuple[int, ...]
    dtype: str


def weight_files(folder: Path, what: str) -> list[Path]:
    """The weight files of a folder: from a safetensors / .bin index when there is one, else every shard."""
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        if (folder / index_name).is_file():
            files = sorted(set((read_json(folder / index_name, what).get("weight_map") or {}).values()))
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


def has_weight_files(folder: Path) -> bool:
    try:
        weight_files(folder, str(folder))
    except ConversionError:
        return False
    return True


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: never unpickle code from a checkpoint; mmap: tensors stay on disk until touched.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except _READ_ERRORS as err:
        raise ConversionError(f"cannot read {path}: {err} (corrupt or incomplete file?)") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{path} does not hold a state dict")
    return state


def read_headers(folder: Path, what: str) -> dict[str, TensorInfo]:
    """Name → TensorInfo for every tensor of the folder's weight files, reading no tensor data."""
    from safetensors import safe_open

    infos: dict[str, TensorInfo] = {}

    def add(entry: TensorInfo) -> None:
        if entry.name in infos:
            raise ConversionError(
                f"{what}: tensor {entry.name!r} is in both {infos[entry.name].file.name} and {entry.file.name}"
            )
        infos[entry.name] = entry

    for file in weight_files(folder, what):
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for name in handle.keys():
                        sl = handle.get_slice(name)
                        add(TensorInfo(file, name, tuple(sl.get_shape()), str(sl.get_dtype())))
            except _READ_ERRORS as err:
                raise ConversionError(f"{what}: cannot read {file}: {err} (corrupt or incomplete file?)") from None
        else:
            state = _load_bin(file)
            for name, tensor in state.items():
                add(TensorInfo(file, name, tuple(tensor.shape), str(tensor.dtype)))
            del state
    return infos


class TensorReader:
    """Reads tensors file by file, keeping at most one file open (a .bin file's mmap'd dict, or a safe_open)."""

    def __init__(self):
        self._file: Path | None = None
        self._handle = None
        self._state: dict[str, torch.Tensor] | None = None

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
        try:
            return self._handle.get_tensor(info.name) if self._handle is not None else self._state[info.name]
        except _READ_ERRORS as err:
            raise ConversionError(f"cannot read tensor {info.name} from {info.file}: {err} (corrupt file?)") from None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
        self._file = self._handle = self._state = None


# ------------------------------------------------------------------------------------------------- vision tower
def load_vision_config(vision_folder: Path):
    """The CLIPVisionConfig of a CLIP folder (a full CLIPModel config or a CLIPVisionModel one)."""
    from transformers import CLIPVisionConfig

    raw = read_json(vision_folder / "config.json", f"vision tower {vision_folder}")
    if raw.get("model_type") == "clip":
        vision = dict(raw.get("vision_config") or {})
        return CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    if raw.get("model_type") == "clip_vision_model":
        return CLIPVisionConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures")})
    raise ConversionError(f"{vision_folder}/config.json is not a CLIP model (model_type={raw.get('model_type')!r})")


def external_vision_tensors(vision_folder: Path) -> tuple[dict[str, TensorInfo], list[str]]:
    """The tensors of a separate CLIP folder under their original in-checkpoint names (``VISION_PREFIX +
    vision_model.*``), plus the names left out (CLIP text tower, projections) for the report."""
    infos = read_headers(vision_folder, f"vision tower {vision_folder}")
    prefixed = any(k.startswith("vision_model.") for k in infos)
    mapped, skipped = {}, []
    for name, info in infos.items():
        if prefixed and not name.startswith("vision_model."):
            skipped.append(name)  # text_model.*, visual_projection, text_projection, logit_scale
            continue
        # a CLIPVisionModel saved by transformers 5 has no vision_model. level
        mapped[VISION_PREFIX + (name if prefixed else "vision_model." + name)] = info
    return mapped, skipped


@dataclass
class VisionSource:
    """The vision tower of a conversion: the folder with its config (+ preprocessor config) and, when its weights
    come from that folder rather than from the checkpoint, its tensors under the original names."""

    folder: Path
    name: str  # what the summary prints: "checkpoint" or the tower given
    tensors: dict[str, TensorInfo] | None = None  # None: the checkpoint's own vision weights
    skipped: list[str] = field(default_factory=list)


def _download_hint(repo: str, checkpoint_has_vision: bool) -> str:
    folder = repo.rsplit("/", 1)[-1]
    hint = f"Download it (`hf download {repo} --local-dir {folder}`) and pass --vision_tower {folder}"
    if checkpoint_has_vision:
        hint += (
            " (the checkpoint carries the vision weights, so a folder with only its config.json and "
            "preprocessor_config.json is enough)"
        )
    return hint


def resolve_vision(original: dict, tensors: dict[str, TensorInfo], vision_tower: str | None) -> VisionSource:
    """Find the vision tower: ``--vision_tower`` (a folder or Hub id) first, else ``mm_vision_tower`` of the
    config. Released configs name the training machine's path (``/playground/models/clip-vit-large-patch14-336``):
    that is read as OpenAI's Hub repo of the same name. A tower folder with weights replaces the checkpoint's vision
    weights; a config-only folder is enough when the checkpoint carries them."""
    has_vision = any(k.startswith(VISION_PREFIX) for k in tensors)
    name = vision_tower or original.get("mm_vision_tower")
    if not name:
        raise ConversionError("config.json has no mm_vision_tower: pass --vision_tower (a CLIP folder or Hub id)")
    name = str(name)
    repo = name
    if vision_tower is None and looks_local(name) and not Path(name).expanduser().is_dir():
        base = Path(name).name
        if not base.startswith("clip-vit-"):
            raise ConversionError(
                f"mm_vision_tower {name!r} is not a local folder: pass --vision_tower (a CLIP folder or Hub id)"
            )
        repo = f"openai/{base}"
        logger.warning("mm_vision_tower %s is a path of the training machine: using %s", name, repo)
    what = "--vision_tower" if vision_tower is not None else "mm_vision_tower"
    try:
        folder = resolve_checkpoint(repo, weights=not has_vision or vision_tower is not None, what=what)
    except ConversionError as err:
        if vision_tower is not None:
            raise
        if repo == name:
            raise ConversionError(f"cannot read the vision tower: {err}. {_download_hint(repo, has_vision)}") from None
        raise ConversionError(
            f"cannot read the vision tower: mm_vision_tower {name!r} is a path of the training "
            f"machine, and {repo} could not be fetched from the Hub"
            f"{' (HF_HUB_OFFLINE=1)' if hub_offline() else ''}. {_download_hint(repo, has_vision)}"
        ) from None

    if vision_tower is None and has_vision:
        return VisionSource(folder, "checkpoint")
    if not has_weight_files(folder):
        if has_vision:  # a config-only --vision_tower for a checkpoint with its own vision weights
            return VisionSource(folder, "checkpoint")
        raise ConversionError(
            f"the checkpoint has no vision weights and the vision tower folder {folder} has none "
            "either: pass a CLIP folder with weights as --vision_tower"
        )
    external, skipped = external_vision_tensors(folder)
    return VisionSource(folder, name, external, skipped)
