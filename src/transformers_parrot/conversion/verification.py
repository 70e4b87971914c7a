"""`verify`: the converted model against an independent computation from the *input* checkpoint's tensors.

The reference is a plain torch forward: transformers' CLIPVisionModel and Qwen2ForCausalLM loaded from the original
keys, the projector and the per-expert MoE loop of the paper written out, the ChatML prompt and the pad-to-square
preprocessing built by hand. It runs first and is freed before the converted model is loaded, so peak memory is
about one model in the verification dtype. Routing weights, post-MoE image features and last-token logits are
compared, relative to the reference's largest magnitude.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.parrot.processing_parrot import DEFAULT_SYSTEM_PROMPT
from .errors import ConversionError
from .hub import resolve_checkpoint
from .reading import (
    VISION_PREFIX,
    TensorInfo,
    TensorReader,
    VisionSource,
    load_original_config,
    load_vision_config,
    read_headers,
    read_json,
    resolve_vision,
)
from .settings import OUTPUT_DTYPES, dtype_from_name

# Prompts of the verification, one per language.
VERIFY_PROMPTS = {
    "en": "What is in the image? Describe the shapes and their colours.",
    "zh": "图片里有什么？请描述形状和颜色。",
    "pt": "O que há na imagem? Descreva as formas e as cores.",
    "ar": "ماذا يوجد في الصورة؟ صف الأشكال وألوانها.",
    "tr": "Resimde ne var? Şekilleri ve renklerini açıklayın.",
    "ru": "Что изображено на картинке? Опишите фигуры и их цвета.",
}


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


def _reference_outputs(
    folder: Path,
    original: dict,
    tensors: dict[str, TensorInfo],
    vision: VisionSource,
    weight_dtype: torch.dtype,
    compute_dtype: torch.dtype,
    image,
    prompts: dict[str, str],
) -> dict[str, dict[str, torch.Tensor]]:
    """Routing weights, post-MoE features and last-token logits computed straight from the original tensors:
    transformers' CLIPVisionModel and Qwen2ForCausalLM loaded from the original keys, projector and the per-expert
    MoE loop written out from the paper's equations (§3.2), prompt built by hand (ChatML), image padded to a square by hand."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    reader = TensorReader()

    def load(info: TensorInfo) -> torch.Tensor:
        # same rounding as the converted weights, then the comparison dtype
        return reader.get(info).to(weight_dtype).to(compute_dtype)

    # vision tower
    vision_tensors = vision.tensors
    if vision_tensors is None:
        vision_tensors = {k: v for k, v in tensors.items() if k.startswith(VISION_PREFIX)}
    vision_config = load_vision_config(vision.folder)
    with torch.device("meta"):
        clip = CLIPVisionModel(vision_config)
    clip_keys = set(clip.state_dict())
    state = {}
    for name, info in vision_tensors.items():
        inner = name[len(VISION_PREFIX) :]
        key = inner if inner in clip_keys else inner[len("vision_model.") :]
        if key in clip_keys:
            state[key] = load(info)
    clip.load_state_dict(state, strict=True, assign=True)
    clip = clip.to(compute_dtype).eval()
    # non-persistent buffers were never materialised on the meta device
    for module in clip.modules():
        if hasattr(module, "position_ids") and module.position_ids.is_meta:
            module.register_buffer(
                "position_ids", torch.arange(module.num_positions).expand((1, -1)), persistent=False
            )

    proc_path = vision.folder / "preprocessor_config.json"
    proc_raw = read_json(proc_path, "vision tower") if proc_path.is_file() else {}
    clip_processor = CLIPImageProcessor(
        **{
            k: v
            for k, v in proc_raw.items()
            if k not in ("image_processor_type", "feature_extractor_type", "processor_class")
        }
    )
    picture = image.convert("RGB")
    if original.get("image_aspect_ratio") == "pad":
        picture = _expand_to_square(picture, tuple(int(x * 255) for x in clip_processor.image_mean))
    pixel_values = torch.as_tensor(clip_processor(picture, return_tensors="np")["pixel_values"]).to(compute_dtype)
    with torch.no_grad():
        hidden = clip(pixel_values, output_hidden_states=True).hidden_states[
            original.get("mm_vision_select_layer", -1)
        ]
    if original.get("mm_vision_select_feature", "patch") == "patch":
        hidden = hidden[:, 1:]
    del clip, state

    # projector
    w0, b0 = load(tensors["model.mm_projector.0.weight"]), load(tensors["model.mm_projector.0.bias"])
    w2, b2 = load(tensors["model.mm_projector.2.weight"]), load(tensors["model.mm_projector.2.bias"])
    with torch.no_grad():
        projected = torch.nn.functional.linear(
            torch.nn.functional.gelu(torch.nn.functional.linear(hidden, w0, b0)), w2, b2
        )[0]  # (L, D)

    # MoE weights, per expert as in the original
    num_experts = int(original["num_experts"])
    gate = load(tensors["model.moe_model.gate.weight"])
    experts = [
        {p: load(tensors[f"model.moe_model.experts.{e}.{p}.weight"]) for p in ("gate_proj", "up_proj", "down_proj")}
        for e in range(num_experts)
    ]

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
        before = f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
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
        results[lang] = {
            "routing": routing,
            "features": features,
            "logits": logits,
            "ids_before": ids_before,
            "ids_after": ids_after,
        }
    del llm, experts
    gc.collect()
    return results


def verify(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    vision_tower: str | None = None,
    compute_dtype: str = "auto",
    image=None,
    prompts: dict[str, str] | None = None,
    tolerance: float | None = None,
    log: Callable[[str], None] = print,
) -> VerifyReport:
    """Compare the converted model in ``output`` with an independent forward over the input checkpoint.

    The reference runs first and is freed before the converted model is loaded, so peak memory is about one model in
    ``compute_dtype``. Differences are measured relative to the reference's largest magnitude."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..assets import bundled_image

    output = Path(output)
    if not (output / "config.json").is_file():
        raise ConversionError(f"{output} holds no converted model (no config.json): convert first")
    if compute_dtype != "auto" and compute_dtype not in OUTPUT_DTYPES:
        raise ConversionError(f"--verify_dtype must be auto or one of {list(OUTPUT_DTYPES)}, got {compute_dtype!r}")
    folder = resolve_checkpoint(input_path)
    original = load_original_config(folder)
    tensors = read_headers(folder, f"checkpoint {folder}")
    vision = resolve_vision(original, tensors, vision_tower)

    converted_config = read_json(output / "config.json", "converted model")
    declared = converted_config.get("dtype") or converted_config.get("torch_dtype")
    weight_dtype = dtype_from_name(declared) or torch.float32
    if compute_dtype == "auto":
        n_params = sum(math.prod(i.shape) for i in tensors.values())
        total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        compute = torch.float32 if n_params * 4 < 0.45 * total_ram else weight_dtype
    else:
        compute = dtype_from_name(compute_dtype)
    if tolerance is None:
        tolerance = 1e-4 if compute == torch.float32 else 3e-2
    image = image if image is not None else bundled_image()
    prompts = prompts or VERIFY_PROMPTS
    log(f"verify: reference forward from {folder} ({compute}, weights rounded to {weight_dtype})")
    reference = _reference_outputs(folder, original, tensors, vision, weight_dtype, compute, image, prompts)

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
        pairs = [
            ("image_features", out.moe_image_features[0].float(), ref["features"].float()),
            ("last_token_logits", out.logits[0, -1, :vocab].float(), ref["logits"].float()),
        ]
        if ref["routing"] is not None:
            pairs.insert(
                0, ("routing_weights", torch.softmax(out.router_logits[0].float(), -1), ref["routing"].float())
            )
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
        log(
            f"  [{lang}] routing {[round(float(x), 4) for x in (ref['routing'] if ref['routing'] is not None else [])]}"
        )
    del model
    report = VerifyReport(max_diffs, {"relative": tolerance}, top1, len(prompts), failures)
    for name, value in max_diffs.items():
        log(f"verify: max |diff| {name}: {value:.3e}")
    log(f"verify: last-token argmax agrees on {top1}/{len(prompts)} prompts")
    return report
