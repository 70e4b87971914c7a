"""`convert`: an original Parrot checkpoint (folder or Hub id) → a transformers-native folder.

Order: every input is resolved and checked first (paths, ``--results``, ``--max_shard_size``, config fields, vision
tower, tokenizer, and every tensor header against the key plan); only then is the output folder (re)created and
written: weights, config with ``auto_map`` and the remote-code files, processor, generation config, model card.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ..models.parrot.processing_parrot import IM_END, IM_START, IMAGE_TOKEN
from .errors import ConversionError
from .hub import resolve_checkpoint
from .key_mapping import build_plan, check_against_plan
from .reading import VISION_PREFIX, load_original_config, load_vision_config, read_headers, resolve_vision
from .settings import image_processor_settings, multimodal_settings, output_dtype, text_config_from_original
from .writing import ShardWriter, parse_shard_size, stream_weights

logger = logging.get_logger(__name__)

ENDOFTEXT = "<|endoftext|>"  # Qwen2's pad / unk token
# Qwen1.5 chat LLMs by (hidden_size, num_hidden_layers): the base model of each released Parrot (for the card).
KNOWN_QWEN_BASES = {
    (4096, 32): "Qwen/Qwen1.5-7B-Chat",
    (5120, 40): "Qwen/Qwen1.5-14B-Chat",
    (2048, 24): "Qwen/Qwen1.5-1.8B-Chat",
    (1024, 24): "Qwen/Qwen1.5-0.5B-Chat",
}


@dataclass
class ConversionResult:
    output: Path
    config: Any
    image_token_id: int
    resized_vocab: bool
    shards: list[str]
    ignored: list[str]
    vision_source: str


def prepare_tokenizer(folder: Path, chat_template: str, model_max_length: int | None):
    """The original tokenizer with ``<image>`` added as a special token (existing one reused)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    for token in (IM_START, IM_END, ENDOFTEXT):
        if token not in tokenizer.get_vocab():
            raise ConversionError(f"the tokenizer in {folder} has no {token}: not a Qwen2 ChatML tokenizer")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens(
            [AddedToken(IMAGE_TOKEN, special=True, normalized=False, lstrip=False, rstrip=False)], special_tokens=True
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = ENDOFTEXT
    tokenizer.chat_template = chat_template
    if model_max_length:
        tokenizer.model_max_length = int(model_max_length)
    return tokenizer


def check_results(results: str | os.PathLike | None) -> None:
    """``--results`` must be a readable results.json / model_index.json before anything is written."""
    if results is None:
        return
    from ..modelcard import eval_results_from

    path = Path(results).expanduser()
    if not path.is_file():
        raise ConversionError(f"--results {results}: no such file")
    try:
        eval_results_from(path, "check")
    except (ValueError, KeyError, TypeError) as err:
        raise ConversionError(
            f"--results {results} is not a parrot-eval results.json or model_index.json: {err}"
        ) from None


def convert(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    vision_tower: str | None = None,
    dtype: str = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    model_name: str | None = None,
    license: str | None = None,
    results: str | os.PathLike | None = None,
    source_repo: str | None = None,
) -> ConversionResult:
    """Convert an original Parrot checkpoint folder (or Hub id) into a transformers-native folder."""
    from transformers import GenerationConfig
    from transformers.dynamic_module_utils import custom_object_save

    from ..modelcard import write_model_card
    from ..models.parrot.configuration_parrot import ParrotConfig
    from ..models.parrot.modeling_parrot import ParrotForConditionalGeneration, set_auto_map
    from ..models.parrot.processing_parrot import DEFAULT_CHAT_TEMPLATE, ParrotProcessor, default_image_processor

    # ---- everything is checked before the output folder is touched
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConversionError(f"--output {output} is a file")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConversionError(f"{output} exists and is not empty (pass --overwrite to replace it)")
    check_results(results)
    shard_bytes = parse_shard_size(max_shard_size)
    folder = resolve_checkpoint(input_path)
    original = load_original_config(folder)
    mm = multimodal_settings(original)
    do_pad = mm.pop("do_pad")

    tensors = read_headers(folder, f"checkpoint {folder}")
    vision = resolve_vision(original, tensors, vision_tower)
    ignored: list[str] = []
    if vision.tensors is not None:
        inside = sorted(k for k in tensors if k.startswith(VISION_PREFIX))
        if inside:
            logger.warning("--vision_tower given: replacing the %d vision tensors of the checkpoint", len(inside))
        ignored += [f"{k} (replaced by --vision_tower)" for k in inside]
        ignored += [f"{vision.folder.name}:{k} (not part of the vision tower)" for k in vision.skipped]
        tensors = {k: v for k, v in tensors.items() if not k.startswith(VISION_PREFIX)} | vision.tensors
    vision_config = load_vision_config(vision.folder)
    if original.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise ConversionError(
            f"mm_hidden_size={original['mm_hidden_size']} differs from the vision tower's "
            f"hidden_size={vision_config.hidden_size}"
        )

    out_dtype = output_dtype(dtype, original, tensors)
    tokenizer = prepare_tokenizer(folder, DEFAULT_CHAT_TEMPLATE, original.get("tokenizer_model_max_length"))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    embed_info = tensors.get("model.embed_tokens.weight")
    vocab_rows = embed_info.shape[0] if embed_info else int(original["vocab_size"])
    target_rows = max(vocab_rows, image_token_id + 1, len(tokenizer))

    tied = bool(original.get("tie_word_embeddings", False))
    text = {
        **text_config_from_original(original),
        "vocab_size": target_rows,
        "tie_word_embeddings": tied,
        "pad_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    }
    config = ParrotConfig(
        vision_config=vision_config.to_dict(),
        text_config=text,
        image_token_id=image_token_id,
        tie_word_embeddings=tied,
        **mm,
    )  # image_seq_length follows from the vision config
    processor = ParrotProcessor(
        image_processor=default_image_processor(**image_processor_settings(vision.folder, do_pad)),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
    )
    config.assistant_header_ids = list(processor.assistant_header_ids)
    config.dtype = out_dtype

    with torch.device("meta"):
        model = ParrotForConditionalGeneration(config)
    plan = build_plan(model.state_dict(), config.num_experts, vocab_rows, tied)
    ignored += check_against_plan(tensors, plan, tied)
    for name in ignored:
        logger.info("not converted: %s", name)

    # ---- writing
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    writer = ShardWriter(output, shard_bytes)
    stream_weights(tensors, plan, writer, out_dtype, config.num_experts, target_rows)
    shards = writer.finish()

    custom_object_save(model, output, config=config)  # configuration_parrot.py, modeling_parrot.py
    set_auto_map(config)
    config.architectures = ["ParrotForConditionalGeneration"]
    config.save_pretrained(output)
    processor.save_pretrained(output)
    GenerationConfig(
        bos_token_id=original.get("bos_token_id"),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    ).save_pretrained(output)
    del model
    write_model_card(
        output,
        config=config,
        model_name=model_name or _default_name(input_path),
        license=license or _input_license(folder),
        base_models=_base_models(original, vision_tower),
        results=results,
        converted_from=source_repo or _source_repo(input_path),
    )
    return ConversionResult(output, config, image_token_id, target_rows > vocab_rows, shards, ignored, vision.name)


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
