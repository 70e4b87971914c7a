#!/usr/bin/env python
"""Memory and speed of quantized Parrot: measured at the `small` preset on this machine, computed for Parrot-7B and
Parrot-14B shapes on the meta device.

Measured (`small` preset of bench_vs_llava.py, saved to a folder and loaded back with
`from_pretrained(folder, quantization_config=BitsAndBytesConfig(...), device_map="cpu")`):

* each of bf16, 8-bit and 4-bit nf4 in its own subprocess: `get_memory_footprint()`, bytes of parameters + buffers
  by dtype, bytes of bitsandbytes' quantization state (4-bit absmax, 8-bit row scales: not parameters), and the
  process's peak resident memory (RSS) while loading, during one prefill (batch 1) and during one greedy `generate`.
  Peak RSS is read from Linux's VmHWM (reset with /proc/self/clear_refs before each step), not tracemalloc:
  tracemalloc sees only the Python heap, and torch allocates tensor memory in C++ outside it;
* first the proof that quantization leaves the routing alone: router logits and post-MoE visual tokens of the 8-bit
  and 4-bit models equal the bf16 model's bitwise, on prompts that route differently; then (only then) prefill and
  decode time of 4-bit and 8-bit against bf16, in alternated rounds, as per-round ratios (median, min, max).

Computed on the meta device (no weights are allocated), from the released configs (CLIP ViT-L/14-336, the Qwen1.5-7B
/ 14B LLM, the 2-layer projector, 6 SwiGLU experts): weights in bf16 / 8-bit / 4-bit (only the LLM's linear layers are
quantized; embeddings, lm_head, vision tower, projector and MoE stay in bf16), and the memory of one QLoRA step
(formulas in the JSON's `formulas`), then which GPU (24 / 40 / 80 GiB) each path fits. The byte formulas are first
checked against the measured small-preset bytes.

    python benchmarks/bench_quantization.py            # writes benchmarks/results/quantization.json
    python benchmarks/bench_quantization.py --smoke --json /tmp/q.json   # seconds: a tiny model, one round
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_vs_llava as base  # noqa: E402  (presets, model builder, inputs, alternated timing, peak RSS)

RESULTS = os.path.join(base.RESULTS_DIR, "quantization.json")
MODES = ("bf16", "int8", "nf4")
GIB = 2**30
GPUS_GIB = (24, 40, 80)
GPU_USABLE = 0.9  # a path "fits" when its total is under 90 % of the GPU: CUDA context, allocator fragmentation
BNB_BLOCK = 64  # bitsandbytes' 4-bit block: one absmax per 64 weights
NESTED_BLOCK = 256  # double quantization: the absmax values are quantized to 8 bits in blocks of 256

# A preset for the smoke test: bench_vs_llava's tiny one with every LLM linear a multiple of 64 wide.
SMOKE = copy.deepcopy(base.PRESETS["tiny"])
SMOKE["text"].update(num_key_value_heads=4, hidden_size=64, intermediate_size=128)
SMOKE["prompt_tokens"], SMOKE["new_tokens"] = 8, 4

# Parrot-14B: CLIP ViT-L/14-336 + Qwen1.5-14B-Chat (hidden 5120, 40 layers, 40 heads, MLP 13696, vocabulary 152064).
PARROT_14B = copy.deepcopy(base.PRESETS["7b"])
PARROT_14B["text"].update(
    hidden_size=5120, intermediate_size=13696, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40
)
PARROT_14B["text"]["vocab_size"] = 152064
SHAPES = {"Parrot-7B": base.PRESETS["7b"], "Parrot-14B": PARROT_14B}


def bnb_config(mode: str):
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if mode == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return None


def load(folder: str, mode: str):
    from transformers import AutoModelForImageTextToText

    import transformers_parrot  # noqa: F401  (registers Parrot with the Auto classes)

    kwargs = {"quantization_config": bnb_config(mode), "device_map": "cpu"} if mode != "bf16" else {}
    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.bfloat16, **kwargs).eval()


def routing_batch(preset: dict[str, Any], batch: int) -> dict[str, torch.Tensor]:
    """`batch` prompts drawn with different seeds (different text: different routing), bf16 images."""
    rows = [base.make_inputs(preset, 1, "cpu", torch.bfloat16, seed=10 + i) for i in range(batch)]
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


# ------------------------------------------------------------------------------------------- measured bytes
def quant_state_bytes(model) -> int:
    """Bytes of bitsandbytes' quantization state, which is not a parameter or buffer: 4-bit absmax (and the nested
    quantization's second level), 8-bit per-row scales (SCB)."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            tensors = [state.absmax, getattr(state, "code", None)]
            if getattr(state, "state2", None) is not None:
                tensors += [state.state2.absmax, state.state2.code]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        # 8-bit row scales: on the weight until the first forward, then on the layer's state
        scb = getattr(weight, "SCB", None)
        if scb is None and getattr(module, "state", None) is not None:
            scb = getattr(module.state, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


def bytes_by_dtype(model) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for tensor in [*model.parameters(), *model.buffers()]:
        out[str(tensor.dtype).replace("torch.", "")] += tensor.numel() * tensor.element_size()
    return dict(out)


def quantized_layers(model) -> dict[str, Any]:
    """Which linear layers bitsandbytes converted: their count and number of weights, by top-level part."""
    parts: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            part = name.split(".")[1] if name.startswith("model.") else name
            kind = type(module).__name__
            entry = parts.setdefault(part, {}).setdefault(kind, 0)
            parts[part][kind] = entry + module.in_features * module.out_features
    return parts


def worker(args) -> None:
    """Subprocess: load one mode from the folder, report its bytes and peak RSS of load / prefill / generate."""
    preset = SMOKE if args.smoke else base.PRESETS[args.preset]
    torch.set_num_threads(args.threads)
    inputs = base.make_inputs(preset, 1, "cpu", torch.bfloat16)
    import transformers  # noqa: F401  (libraries imported before the start: their code is not the model's memory)

    import transformers_parrot  # noqa: F401

    if args.mode != "bf16":
        import bitsandbytes  # noqa: F401
    start = base._reset_peak_rss()
    model = load(args.folder, args.mode)
    loaded_peak = base._peak_rss()
    loaded = base._reset_peak_rss()
    report = {
        "get_memory_footprint": int(model.get_memory_footprint()),
        "parameters_and_buffers_by_dtype": bytes_by_dtype(model),
        "quant_state_bytes": quant_state_bytes(model),
        "linear_weights_by_part_and_class": quantized_layers(model),
    }
    with torch.inference_mode():
        model(**inputs, logits_to_keep=1)
    prefill_peak = base._peak_rss()
    base._reset_peak_rss()
    n = preset["new_tokens"]
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    generate_peak = base._peak_rss()
    print(
        json.dumps(
            {
                **report,
                "rss_before_load": start,
                "rss_after_load": loaded,
                "peak_rss_load_over_start": loaded_peak - start,
                "peak_rss_prefill_b1_over_loaded": prefill_peak - loaded,
                "peak_rss_generate_over_loaded": generate_peak - loaded,
                "peak_rss_prefill_b1": prefill_peak,
                "peak_rss_generate": generate_peak,
            }
        )
    )


def run_worker(args, mode: str, folder: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", mode, "--_folder", folder]
    cmd += ["--preset", args.preset, "--threads", str(args.threads)] + (["--smoke"] if args.smoke else [])
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{mode} worker failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- equality, speed
@torch.inference_mode()
def check_routing(models: dict[str, Any], batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Router logits and post-MoE tokens of each quantized model against bf16's; raises when they differ."""
    outputs = {name: model(**batch, output_router_logits=True) for name, model in models.items()}
    reference = outputs["bf16"]
    report: dict[str, Any] = {
        "images": int(batch["pixel_values"].shape[0]),
        "distinct_top_experts": int(reference.router_logits.argmax(-1).unique().numel()),
    }
    for name, out in outputs.items():
        if name == "bf16":
            continue
        ours, theirs = out.logits.float(), reference.logits.float()
        report[name] = {
            "router_logits_equal": bool(torch.equal(out.router_logits, reference.router_logits)),
            "moe_image_features_equal": bool(torch.equal(out.moe_image_features, reference.moe_image_features)),
            "logits_relative_error": float((ours - theirs).norm() / theirs.norm()),
            "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
        }
        if not (report[name]["router_logits_equal"] and report[name]["moe_image_features_equal"]):
            raise RuntimeError(f"{name}: routing differs from the bf16 model's: {report[name]}")
    return report


def measure_speed(models: dict[str, Any], preset: dict[str, Any], repeats: int) -> dict[str, Any]:
    inputs = base.make_inputs(preset, 1, "cpu", torch.bfloat16)
    prefill = base.measure_prefill(models, inputs, "cpu", repeats)
    decode = base.measure_decode(models, inputs, preset["new_tokens"], "cpu", repeats)
    out: dict[str, Any] = {"prefill_b1_s": prefill, "decode": decode, "ratios_over_bf16": {}}
    for name in models:
        if name == "bf16":
            continue
        out["ratios_over_bf16"][name] = {
            # time ratios: > 1 means slower than bf16
            "prefill_b1_time": base.spread(prefill[name], prefill["bf16"]),
            "decode_time_per_token": base.spread(decode[f"{name}_decode_round_s"], decode["bf16_decode_round_s"]),
        }
    return out


# ------------------------------------------------------------------------------------------- computed (meta)
def meta_model(preset: dict[str, Any]):
    from transformers_parrot import ParrotForConditionalGeneration

    config, _ = base.configs(preset)
    with torch.device("meta"):
        return ParrotForConditionalGeneration(config), config


def count_parts(model) -> dict[str, Any]:
    """Parameter counts by what bitsandbytes does with them: the LLM's linear weights (quantized; with their
    shapes), their biases, and every other parameter by part (kept in the compute dtype)."""
    quantized: list[tuple[int, int]] = []  # (out_features, in_features)
    counts: dict[str, int] = defaultdict(int)
    linear_weights = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.language_model."):
            quantized.append((module.out_features, module.in_features))
            linear_weights.add(f"{name}.weight")
    for name, parameter in model.named_parameters():
        if name in linear_weights:
            continue
        if name.startswith("model.language_model."):
            if name.endswith(".bias"):
                key = "llm_linear_biases"
            else:
                key = "llm_embeddings" if ".embed_tokens." in name else "llm_norms"
        elif name.startswith("lm_head."):
            key = "lm_head"
        else:
            key = name.split(".")[1]  # vision_tower, multi_modal_projector, moe
        counts[key] += parameter.numel()
    counts["llm_linear_weights"] = sum(o * i for o, i in quantized)
    return {"counts": dict(counts), "quantized_shapes": quantized}


def quantized_weight_bytes(shapes: list[tuple[int, int]], mode: str) -> int:
    """Bytes of the LLM's linear weights: bf16 2 B/weight; 8-bit 1 B/weight + one fp32 scale per output row; 4-bit
    0.5 B/weight + one fp32 absmax per 64 weights, or with double quantization one 8-bit absmax per 64 weights + one
    fp32 per 256 of those + a 256-entry fp32 code per layer (and a 16-entry fp32 code per layer for nf4)."""
    total = 0
    for out_features, in_features in shapes:
        n = out_features * in_features
        if mode == "bf16":
            total += 2 * n
        elif mode == "int8":
            total += n + 4 * out_features
        elif mode == "nf4":
            total += n // 2 + 4 * math.ceil(n / BNB_BLOCK) + 4 * 16
        elif mode == "nf4-double":
            blocks = math.ceil(n / BNB_BLOCK)
            total += n // 2 + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 * 256 + 4 * 16
        else:
            raise ValueError(mode)
    return total


# The parts `prepare_kbit_model` (PEFT's k-bit preparation) leaves in float32; the embeddings and lm_head go back to bf16.
QLORA_FLOAT32_PARTS = ("llm_norms", "llm_linear_biases", "vision_tower", "multi_modal_projector", "moe")


def weight_bytes(parts: dict[str, Any], mode: str, float32_parts: tuple[str, ...] = ()) -> int:
    """All weights: the LLM's linear weights in `mode`, the `float32_parts` at 4 bytes per parameter, everything else
    at 2 (bf16)."""
    others = {k: v for k, v in parts["counts"].items() if k != "llm_linear_weights"}
    kept = sum((4 if k in float32_parts else 2) * v for k, v in others.items())
    return quantized_weight_bytes(parts["quantized_shapes"], mode) + kept


def lora_parameters(model, r: int) -> int:
    """LoRA's parameters r·(in + out) on every linear layer the recipe targets (its own regex)."""
    from transformers_parrot.training.recipes import LLM_LORA_TARGETS

    pattern = re.compile(LLM_LORA_TARGETS)
    return sum(
        r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)
    )


FORMULAS = {
    "sequence": "S = image_tokens (577: CLS + 24x24 patches) + text_tokens",
    "weights_frozen": (
        "QLoRA (the recipe): LLM linear weights at 4 bits (nf4, double quantization) or 8 bits; embeddings and "
        "lm_head in bf16, every other base parameter (norms, LLM biases, vision tower, projector, MoE) in fp32, as "
        "transformers_parrot.training.scripts.prepare_kbit_model leaves them; LoRA on a bf16 base: everything in bf16"
    ),
    "trainable": (
        "LoRA r*(in+out) on the recipe's targets (q,k,v,o,gate,up,down of every LLM layer), bf16 (TRL's cast); "
        "PEFT's trained copies of projector + MoE (modules_to_save) in the dtype of the frozen originals"
    ),
    "gradients": "one per trainable parameter, in its dtype",
    "optimizer": "AdamW: two fp32 states per trainable parameter (8 bytes)",
    "activations": (
        "activation checkpointing: layers * b*S*D*2 (one bf16 hidden state per LLM layer) + one layer's working set "
        "b*S*(18*D + 5*I)*2 (layer input, norms, q/k/v/o and MLP inputs and outputs, LoRA dropout copies, "
        "gradients in flight; attention through SDPA/flash, no S*S matrix) + logits b*S*V*12 (fp32 logits, "
        "log-softmax and its gradient) + MoE and projector (trained, not checkpointed) b*577*(4*E*I_moe + 3*D + "
        "D_vision)*bytes_moe; the frozen vision tower keeps no activations"
    ),
    "fits": f"total <= {GPU_USABLE} * GPU memory (GiB = 2**30 bytes)",
}


def activation_bytes(preset: dict[str, Any], batch: int, seq: int, moe_bytes: int) -> dict[str, int]:
    text = preset["text"]
    d, i, layers, vocab = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"], text["vocab_size"]
    image = base.tokens_per_image(preset["vision"]["image_size"], preset["vision"]["patch_size"])
    moe = batch * image * (4 * preset["num_experts"] * preset["moe_intermediate_size"] + 3 * d)
    moe += batch * image * preset["vision"]["hidden_size"]
    return {
        "checkpoints": layers * batch * seq * d * 2,
        "layer_working_set": batch * seq * (18 * d + 5 * i) * 2,
        "logits": batch * seq * vocab * 12,
        "moe_and_projector": moe * moe_bytes,
    }


def training_paths(model, preset: dict[str, Any], parts: dict[str, Any], r: int, text_tokens: int) -> dict:
    image = base.tokens_per_image(preset["vision"]["image_size"], preset["vision"]["patch_size"])
    seq = image + text_tokens
    counts = parts["counts"]
    multimodal = counts["multi_modal_projector"] + counts["moe"]
    lora = lora_parameters(model, r)
    paths = {
        "qlora_4bit": {"mode": "nf4-double", "float32_parts": QLORA_FLOAT32_PARTS},
        "qlora_8bit": {"mode": "int8", "float32_parts": QLORA_FLOAT32_PARTS},
        "lora_bf16": {"mode": "bf16", "float32_parts": ()},
    }
    out: dict[str, Any] = {"sequence_length": seq, "lora_r": r, "lora_parameters": lora}
    for name, path in paths.items():
        kept = 4 if "moe" in path["float32_parts"] else 2  # bytes per projector / MoE parameter
        weights = weight_bytes(parts, path["mode"], path["float32_parts"])
        trainable = 2 * lora + kept * multimodal  # LoRA in bf16; projector + MoE copies in the originals' dtype
        grads = trainable
        optimizer = 8 * (lora + multimodal)
        per_batch = {}
        for batch in (1, 4):
            acts = activation_bytes(preset, batch, seq, kept)
            total = weights + trainable + grads + optimizer + sum(acts.values())
            per_batch[f"batch_{batch}"] = {
                "activations": acts,
                "total_bytes": total,
                "total_gib": total / GIB,
                "fits_gpus_gib": [g for g in GPUS_GIB if total <= GPU_USABLE * g * GIB],
            }
        out[name] = {
            "frozen_weights_bytes": weights,
            "trainable_parameters": lora + multimodal,
            "trainable_bytes": trainable,
            "gradient_bytes": grads,
            "optimizer_bytes": optimizer,
            **per_batch,
        }
    # full fine-tune of stage 2 (LLM + projector + MoE), bf16 weights and gradients, fp32 AdamW states, no sharding
    total_params = sum(counts.values())
    trained = total_params - counts["vision_tower"]
    full = {"weights_bytes": 2 * total_params, "gradient_bytes": 2 * trained, "optimizer_bytes": 8 * trained}
    for batch in (1, 4):
        acts = activation_bytes(preset, batch, seq, 2)
        total = full["weights_bytes"] + full["gradient_bytes"] + full["optimizer_bytes"] + sum(acts.values())
        full[f"batch_{batch}"] = {
            "activations": acts,
            "total_bytes": total,
            "total_gib": total / GIB,
            "fits_gpus_gib": [g for g in GPUS_GIB if total <= GPU_USABLE * g * GIB],
        }
    out["full_bf16"] = full
    return out


def computed_shapes(r: int, text_tokens: int) -> dict[str, Any]:
    out = {}
    for name, preset in SHAPES.items():
        model, config = meta_model(preset)
        parts = count_parts(model)
        inference = {}
        for mode in ("bf16", "int8", "nf4", "nf4-double"):
            weights = weight_bytes(parts, mode)
            inference[mode] = {
                "weights_bytes": weights,
                "weights_gib": weights / GIB,
                "fits_gpus_gib": [g for g in GPUS_GIB if weights <= GPU_USABLE * g * GIB],
            }
        out[name] = {
            "config": {
                "text": preset["text"],
                "vision": preset["vision"],
                "num_experts": preset["num_experts"],
                "moe_intermediate_size": preset["moe_intermediate_size"],
            },
            "parameters": parts["counts"],
            "total_parameters": sum(parts["counts"].values()),
            "quantized_fraction": parts["counts"]["llm_linear_weights"] / sum(parts["counts"].values()),
            "inference_weights": inference,
            "training": training_paths(model, preset, parts, r, text_tokens),
        }
    return out


def formula_check(preset: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The byte formulas at the small preset against the measured parameters + buffers + quantization state."""
    model, _ = meta_model(preset)
    parts = count_parts(model)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # e.g. RoPE's inv_freq (fp32)
    out = {}
    for mode in MODES:
        measured_bytes = sum(measured[mode]["parameters_and_buffers_by_dtype"].values())
        measured_bytes += measured[mode]["quant_state_bytes"]
        predicted = weight_bytes(parts, mode) + buffers
        out[mode] = {
            "predicted_bytes": predicted,
            "measured_bytes": measured_bytes,
            "relative_difference": (predicted - measured_bytes) / measured_bytes,
        }
    quantized = measured["nf4"]["linear_weights_by_part_and_class"]
    out["measured_4bit_weights"] = sum(kinds.get("Linear4bit", 0) for kinds in quantized.values())
    out["predicted_quantized_weights"] = parts["counts"]["llm_linear_weights"]
    return out


def qlora_check(folder: str, preset: dict[str, Any]) -> dict[str, Any]:
    """The QLoRA base-weight formula against the bytes of the small preset loaded in 4 bits (nf4, bf16) and prepared
    for training by the recipes' own `prepare_kbit_model`."""
    from transformers_parrot.training.scripts import prepare_kbit_model

    model = load(folder, "nf4")
    cast = prepare_kbit_model(model)
    measured_bytes = sum(bytes_by_dtype(model).values()) + quant_state_bytes(model)
    meta, _ = meta_model(preset)
    parts = count_parts(meta)
    predicted = weight_bytes(parts, "nf4", QLORA_FLOAT32_PARTS)
    predicted += sum(b.numel() * b.element_size() for b in meta.buffers())
    return {
        "parameters_cast_back_to_bf16": cast,
        "predicted_bytes": predicted,
        "measured_bytes": measured_bytes,
        "relative_difference": (predicted - measured_bytes) / measured_bytes,
        "bytes_by_dtype": bytes_by_dtype(model),
    }


def lora_check(preset: dict[str, Any], r: int) -> dict[str, int]:
    """LoRA parameter count of the formula against PEFT's own on a real (unquantized) small model."""
    from peft import get_peft_model

    from transformers_parrot.training.recipes import lora_config_for_parrot

    model = base.build_models(preset, "cpu", torch.bfloat16, None, which=("parrot",))["parrot"]
    predicted = lora_parameters(model, r)
    peft_model = get_peft_model(model, lora_config_for_parrot(r=r))
    counted = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    return {"predicted": predicted, "peft": counted}


# ------------------------------------------------------------------------------------------- main
def environment(threads: int) -> dict[str, Any]:
    import bitsandbytes
    import transformers

    return {
        "device": "cpu",
        "device_name": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["small"], default="small", help="measured preset (bench_vs_llava.py)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and one round: checks the code path")
    parser.add_argument("--repeats", type=int, default=None, help="alternated timing rounds (default 7; smoke 1)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank (the recipes' default: TRL's --lora_r)")
    parser.add_argument("--text_tokens", type=int, default=512, help="text tokens per sample next to the image")
    parser.add_argument("--json", default=None, help=f"output (default: {os.path.relpath(RESULTS)}; smoke: none)")
    parser.add_argument("--_worker", choices=MODES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        args.mode, args.folder = args._worker, args._folder
        worker(args)
        return {}
    preset = SMOKE if args.smoke else base.PRESETS[args.preset]
    repeats = args.repeats or (1 if args.smoke else 7)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model = base.build_models(preset, "cpu", torch.bfloat16, None, which=("parrot",))["parrot"]
        parameters = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        del model
        measured = {mode: run_worker(args, mode, folder) for mode in MODES}  # before this process loads anything
        models = {mode: load(folder, mode) for mode in MODES}
        routing = check_routing(models, routing_batch(preset, 4))  # raises on a difference: nothing is timed then
        speed = measure_speed(models, preset, repeats)
        del models
        qlora = qlora_check(folder, preset)
    result = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", __file__, *argv]),
        "environment": environment(args.threads),
        "preset": "smoke" if args.smoke else args.preset,
        "repeats": repeats,
        "peak_memory_method": (
            "peak resident set size (Linux VmHWM, reset through /proc/self/clear_refs before each step), each mode in "
            "a fresh subprocess; tracemalloc is not used: it sees the Python heap only, torch allocates tensors in C++"
        ),
        "measured": {
            "parameters": parameters,
            "image_tokens": base.tokens_per_image(preset["vision"]["image_size"], preset["vision"]["patch_size"]),
            "new_tokens": preset["new_tokens"],
            "memory": measured,
            "routing": routing,
            "speed": speed,
        },
        "formula_check": {**formula_check(preset, measured), "qlora_prepared_nf4": qlora},
        "lora_check": lora_check(preset, args.lora_r),
        "formulas": FORMULAS,
        "assumptions": {
            "lora_r": args.lora_r,
            "text_tokens": args.text_tokens,
            "moe": "6 SwiGLU experts, intermediate size 4096, for both shapes (the released Parrot-7B's MoE)",
            "gpus_gib": list(GPUS_GIB),
            "gpu_usable_fraction": GPU_USABLE,
        },
        "computed": computed_shapes(args.lora_r, args.text_tokens),
    }
    path = args.json or (None if args.smoke else RESULTS)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
