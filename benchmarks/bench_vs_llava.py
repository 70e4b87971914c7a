#!/usr/bin/env python
"""Parrot vs LLaVA, same process, same shapes, same weights where shared.

Builds transformers' own `LlavaForConditionalGeneration` and `ParrotForConditionalGeneration` with identical
vision tower / projector / LLM configs, copies every shared weight from Parrot into LLaVA by name, checks that
Parrot with its MoE bypassed (`use_moe=False`) gives LLaVA's logits, then measures, alternating the two models
and reporting medians and Parrot/LLaVA ratios:

* prefill latency (image + prompt, `logits_to_keep=1` as in `generate`) at batch 1 and batch 8;
* decode throughput: greedy `generate` with the KV cache and a fixed number of new tokens
  (`min_new_tokens == max_new_tokens`); decode time = t(generate n tokens) - t(generate 1 token) per round, so the prefill
  is not counted;
* one SFT training step: forward + backward + AdamW step over the trained parts (projector, MoE, LLM; the vision
  tower is frozen as in both of Parrot's stages), labels on the answer only;
* peak memory of the batch-8 prefill and of the training step, each model in a fresh subprocess
  (CUDA: `torch.cuda.max_memory_allocated`; CPU: growth of the process's peak RSS, `ru_maxrss`, from just before
  the model is built to the end of the workload, i.e. weights + optimizer state + peak activations);
* the MoE module alone: achieved FLOP/s against a plain matmul of the same sizes on the same device
  (dense MoE FLOPs = 2·N·L·D·2I·E + 2·N·L·I·D·E, the two expert matmuls; the router is not counted), and its
  time with `moe_top_k=1` over the dense time;
* the MoE's FLOP share of a prefill / training step: (FLOPs(Parrot) - FLOPs(LLaVA)) / FLOPs(Parrot), counted by
  `torch.utils.flop_counter.FlopCounterMode` with eager attention (the only difference between the two models is
  the MoE, so this is exactly what the MoE adds).

Every ratio is also computed per round (the two sides of a round ran back to back under the same load) and
reported with its spread over rounds (min, max), since shared machines are noisy.

Optional `--check-compile`: `torch._dynamo.explain` and `torch.compile(fullgraph=True)` on the MoE module,
`torch.compile` of the model's forward generating with a static cache against eager, and bf16 on CPU.

    python benchmarks/bench_vs_llava.py --preset small   # writes benchmarks/results/small_cpu.json and .md
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from transformers_parrot.models.parrot.configuration_parrot import tokens_per_image

# ----------------------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: for the smoke test.
    "tiny": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 30,
            "patch_size": 10,
        },
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 512,
        },
        "num_experts": 6,
        "moe_intermediate_size": 64,
        "prompt_tokens": 16,
        "new_tokens": 8,
        "train_batch": 2,
        "answer_tokens": 8,
        "repeats": 2,
    },
    # ~100M parameters; the MoE alone is measured at batch 8, 577 tokens, hidden 1024,
    # intermediate 1024, 6 experts; a light CLIP at 336 px / patch 14 gives Parrot's 577 visual tokens.
    "small": {
        "vision": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 336,
            "patch_size": 14,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 4,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "vocab_size": 16384,
        },
        "num_experts": 6,
        "moe_intermediate_size": 1024,
        "prompt_tokens": 32,
        "new_tokens": 16,
        "train_batch": 2,
        "answer_tokens": 32,
        "repeats": 7,
    },
    # Parrot-7B shapes (CLIP ViT-L/14-336 + Qwen1.5-7B): for GPUs (~16 GB of bf16 weights per model).
    "7b": {
        "vision": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
        },
        "text": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 151936,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
        },
        "num_experts": 6,
        "moe_intermediate_size": 4096,
        "prompt_tokens": 48,
        "new_tokens": 64,
        "train_batch": 1,
        "answer_tokens": 64,
        "repeats": 5,
    },
}

MOE_BATCH = 8  # images for the MoE-alone measurement
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def special_ids(vocab_size: int) -> dict[str, int]:
    """Special tokens at the top of the vocabulary; random prompt text is drawn below them."""
    return {
        "image": vocab_size - 1,
        "im_start": vocab_size - 2,
        "im_end": vocab_size - 3,
        "assistant": vocab_size - 4,
        "newline": vocab_size - 5,
        "text_max": vocab_size - 8,
    }


def configs(preset: dict[str, Any], attn_implementation: str | None = None):
    """(ParrotConfig, LlavaConfig) with identical vision / projector / LLM configs."""
    from transformers import LlavaConfig

    from transformers_parrot import ParrotConfig

    vocab = preset["text"]["vocab_size"]
    ids = special_ids(vocab)
    vision = {"model_type": "clip_vision_model", "projection_dim": preset["vision"]["hidden_size"], **preset["vision"]}
    text = {
        "model_type": "qwen2",
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "eos_token_id": ids["im_end"],
        "pad_token_id": ids["im_end"],
        **preset["text"],
    }
    seq = tokens_per_image(vision["image_size"], vision["patch_size"])
    common = {
        "image_token_id": ids["image"],
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "full",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "image_seq_length": seq,
        "tie_word_embeddings": False,
    }
    parrot = ParrotConfig(
        vision_config=dict(vision),
        text_config=dict(text),
        num_experts=preset["num_experts"],
        moe_intermediate_size=preset["moe_intermediate_size"],
        moe_residual_weight=0.1,
        assistant_header_ids=[ids["im_start"], ids["assistant"], ids["newline"]],
        **common,
    )
    llava = LlavaConfig(vision_config=dict(vision), text_config=dict(text), **common)
    for config in (parrot, llava):
        if attn_implementation:
            config._attn_implementation = attn_implementation
            config.text_config._attn_implementation = attn_implementation
            config.vision_config._attn_implementation = attn_implementation
    return parrot, llava


def build_models(
    preset: dict[str, Any],
    device: str,
    dtype: torch.dtype,
    attn_implementation: str | None,
    which: tuple[str, ...] = ("parrot", "llava"),
    seed: int = 0,
):
    """Parrot with seeded random weights; LLaVA with every shared weight copied from it by name."""
    from transformers import LlavaForConditionalGeneration

    from transformers_parrot import ParrotForConditionalGeneration

    parrot_config, llava_config = configs(preset, attn_implementation)
    torch.manual_seed(seed)
    models = {}
    if which == ("llava",):  # alone (memory worker): its own seeded weights, no Parrot in memory
        models["llava"] = LlavaForConditionalGeneration(llava_config)
        which = ()
    parrot = ParrotForConditionalGeneration(parrot_config) if which else None
    if "llava" in which:
        llava = LlavaForConditionalGeneration(llava_config)
        parrot_state = parrot.state_dict()
        llava_state = llava.state_dict()
        missing = sorted(set(llava_state) - set(parrot_state))
        if missing:
            raise RuntimeError(f"LLaVA weights without a Parrot counterpart: {missing[:5]}")
        llava.load_state_dict({key: parrot_state[key] for key in llava_state}, strict=True)
        extra = sorted(set(parrot_state) - set(llava_state))
        if any(not key.startswith("model.moe.") for key in extra):
            raise RuntimeError(f"Parrot weights outside the MoE that LLaVA lacks: {extra}")
        models["llava"] = llava
    if "parrot" in which:
        models["parrot"] = parrot
    for model in models.values():
        model.to(device=device, dtype=dtype).eval()
        model.generation_config.pad_token_id = model.config.text_config.pad_token_id
        model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    return models


def make_inputs(
    preset: dict[str, Any], batch: int, device: str, dtype: torch.dtype, with_answer: bool = False, seed: int = 1
) -> dict[str, torch.Tensor]:
    """ChatML-shaped batch: system, user turn with the expanded <image> and a question, assistant header
    (and, for training, an answer with labels on it only)."""
    vocab = preset["text"]["vocab_size"]
    ids = special_ids(vocab)
    seq = tokens_per_image(preset["vision"]["image_size"], preset["vision"]["patch_size"])
    gen = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(10, ids["text_max"], (batch, n), generator=gen)

    def tok(name):
        return torch.full((batch, 1), ids[name])

    n_prompt = preset["prompt_tokens"]
    parts = [
        tok("im_start"),
        text(4),
        tok("newline"),
        text(max(n_prompt // 4, 1)),
        tok("im_end"),
        tok("newline"),
        tok("im_start"),
        text(1),
        tok("newline"),
        torch.full((batch, seq), ids["image"]),
        tok("newline"),
        text(n_prompt),
        tok("im_end"),
        tok("newline"),
        tok("im_start"),
        tok("assistant"),
        tok("newline"),
    ]
    prompt_len = sum(part.shape[1] for part in parts)
    if with_answer:
        parts += [text(preset["answer_tokens"]), tok("im_end"), tok("newline")]
    input_ids = torch.cat(parts, dim=1)
    size = preset["vision"]["image_size"]
    pixel_values = torch.randn(batch, 3, size, size, generator=gen)
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixel_values.to(device=device, dtype=dtype),
    }
    if with_answer:
        labels = input_ids.clone()
        labels[:, :prompt_len] = -100
        inputs["labels"] = labels.to(device)
    return inputs


# ----------------------------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, device: str, warmup: int = 1) -> dict[str, list[float]]:
    """Run the callables in turn (A B A B ...) after `warmup` untimed rounds; all samples in seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        names = list(fns) if round_ % 2 == 0 else list(reversed(fns))  # ABBA: no fixed order advantage
        for name in names:
            samples[name].append(timed(fns[name], device))
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(numerators: list[float], denominators: list[float]) -> dict[str, float]:
    """Median, min and max over rounds of the per-round ratio numerator / denominator."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def check_identical_without_moe(models, inputs) -> dict[str, Any]:
    """Parrot with the MoE bypassed must be LLaVA (same weights, same features, same LLM)."""
    parrot, llava = models["parrot"], models["llava"]
    parrot.config.use_moe = False
    try:
        logits_p = parrot(**inputs).logits
    finally:
        parrot.config.use_moe = True
    logits_l = llava(**inputs).logits
    logits_moe = parrot(**inputs).logits
    return {
        "max_abs_diff_use_moe_false": float((logits_p - logits_l).abs().max()),
        "bitwise_equal_use_moe_false": bool(torch.equal(logits_p, logits_l)),
        "max_abs_diff_with_moe": float((logits_moe - logits_l).abs().max()),
    }


def flop_count(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure_flop_shares(preset, device, dtype, inputs_b1, inputs_b8, train_inputs) -> dict[str, Any]:
    """FLOPs of each model's prefill (b1, b8) and training fwd+bwd, counted with eager attention."""
    models = build_models(preset, device, dtype, "eager")
    out: dict[str, Any] = {}
    for name, model in models.items():
        with torch.inference_mode():
            out[f"{name}_prefill_b1_flops"] = flop_count(lambda m=model: m(**inputs_b1, logits_to_keep=1))
            out[f"{name}_prefill_b8_flops"] = flop_count(lambda m=model: m(**inputs_b8, logits_to_keep=1))
        model.train()
        freeze_vision(model)
        out[f"{name}_train_flops"] = flop_count(lambda m=model: m(**train_inputs).loss.backward())
    for key in ("prefill_b1", "prefill_b8", "train"):
        parrot, llava = out[f"parrot_{key}_flops"], out[f"llava_{key}_flops"]
        out[f"moe_flop_share_{key}"] = (parrot - llava) / parrot
    del models
    gc.collect()
    return out


def freeze_vision(model) -> None:
    for param in model.model.vision_tower.parameters():
        param.requires_grad_(False)


def moe_dense_flops(num_images: int, seq: int, hidden: int, inter: int, experts: int) -> int:
    return 2 * num_images * seq * hidden * 2 * inter * experts + 2 * num_images * seq * inter * hidden * experts


@torch.inference_mode()
def measure_moe(parrot, preset, device, dtype, repeats: int) -> dict[str, Any]:
    """The MoE module alone on MOE_BATCH images vs plain matmuls of the same sizes; top-1 vs dense time."""
    moe = parrot.model.moe
    config = parrot.config
    n, seq = MOE_BATCH, config.image_seq_length
    hidden, inter, experts = config.text_config.hidden_size, config.moe_intermediate_size, config.num_experts
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(n, seq, hidden, generator=gen).to(device, dtype)
    text = torch.randn(n, 40, hidden, generator=gen).to(device, dtype)
    guidance = torch.ones(n, 40, dtype=torch.bool, device=device)
    image_to_sample = torch.arange(n, device=device)
    # Plain matmuls with the same (M, K, N) as the two expert matmuls, contiguous operands.
    a1 = torch.randn(n * seq, hidden, generator=gen).to(device, dtype)
    w1 = torch.randn(experts * 2 * inter, hidden, generator=gen).to(device, dtype)
    a2 = torch.randn(n * seq, experts * inter, generator=gen).to(device, dtype)
    w2 = torch.randn(hidden, experts * inter, generator=gen).to(device, dtype)

    def plain():
        torch.nn.functional.linear(a1, w1)
        torch.nn.functional.linear(a2, w2)

    def dense():
        moe(features, text, guidance, image_to_sample)

    top_k_saved = moe.top_k

    def top1():
        moe.top_k = 1
        try:
            moe(features, text, guidance, image_to_sample)
        finally:
            moe.top_k = top_k_saved

    samples = alternate({"plain_matmul": plain, "moe_dense": dense, "moe_top1": top1}, max(repeats, 3), device)
    flops = moe_dense_flops(n, seq, hidden, inter, experts)
    plain_t, dense_t, top1_t = (median(samples[k]) for k in ("plain_matmul", "moe_dense", "moe_top1"))
    return {
        "moe_shape": {
            "images": n,
            "tokens_per_image": seq,
            "hidden": hidden,
            "intermediate": inter,
            "experts": experts,
        },
        "moe_dense_flops": flops,
        "moe_gflops_per_s": flops / dense_t / 1e9,
        "plain_matmul_gflops_per_s": flops / plain_t / 1e9,
        "moe_matmul_efficiency": plain_t / dense_t,
        "moe_top1_time_ratio": top1_t / dense_t,
        "moe_matmul_efficiency_spread": spread(samples["plain_matmul"], samples["moe_dense"]),
        "moe_top1_time_ratio_spread": spread(samples["moe_top1"], samples["moe_dense"]),
        "samples": samples,
    }


def measure_prefill(models, inputs, device, repeats) -> dict[str, list[float]]:
    fns = {}
    for name, model in models.items():
        fns[name] = (lambda m: lambda: m(**inputs, logits_to_keep=1))(model)
    with torch.inference_mode():
        return alternate(fns, repeats, device)


def measure_decode(models, inputs, new_tokens, device, repeats) -> dict[str, Any]:
    """Decode tokens/s = (n - 1) / median over rounds of (t(generate n) - t(generate 1)), alternated runs."""
    generated = {}

    def gen(model, name, n):
        def run():
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
            generated[name] = out

        return run

    fns = {}
    for name, model in models.items():
        fns[f"{name}_n"] = gen(model, name, new_tokens)
        fns[f"{name}_1"] = gen(model, f"{name}_first", 1)
    with torch.inference_mode():
        samples = alternate(fns, repeats, device)
    out: dict[str, Any] = {"samples": samples, "new_tokens": new_tokens}
    for name in models:
        # Paired per round (same load), then the median over rounds.
        per_round = [n - one for n, one in zip(samples[f"{name}_n"], samples[f"{name}_1"])]
        out[f"{name}_decode_round_s"] = per_round
        decode_time = median(per_round)
        out[f"{name}_decode_s"] = decode_time
        out[f"{name}_tokens_per_s"] = (new_tokens - 1) / decode_time
        out[f"{name}_generated_len"] = int(generated[name].shape[1])
    return out


def make_train_step(model, inputs, lr=1e-5):
    freeze_vision(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, foreach=True)

    def step():
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def measure_train(models, inputs, device, repeats) -> dict[str, list[float]]:
    fns = {name: make_train_step(model, inputs) for name, model in models.items()}
    return alternate(fns, repeats, device)


# ----------------------------------------------------------------------------------------------------------------
# Peak memory (fresh subprocess per model and workload)
# ----------------------------------------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Current RSS in bytes, after resetting the peak to it where Linux allows (/proc/self/clear_refs "5").

    `ru_maxrss` is not used on Linux: a child started by fork+exec inherits the parent's peak in it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    current = _proc_status_bytes("VmRSS")
    if current is not None:
        return current
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def _peak_rss() -> int:
    peak = _proc_status_bytes("VmHWM")  # this process image's peak RSS (reset at exec and by clear_refs)
    if peak is not None:
        return peak
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def memory_worker(args) -> None:
    """Subprocess: build one model, run one workload, print the peak memory in bytes as JSON."""
    preset = PRESETS[args.preset]
    dtype = DTYPES[args.dtype]
    batch = 8 if args.memory_workload == "prefill_b8" else preset["train_batch"]
    inputs = make_inputs(preset, batch, args.device, dtype, with_answer=args.memory_workload == "train")
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    model = build_models(preset, args.device, dtype, args.attn, which=(args.memory_model,))[args.memory_model]
    if args.memory_workload == "prefill_b8":
        with torch.inference_mode():
            model(**inputs, logits_to_keep=1)
    else:
        step = make_train_step(model, inputs)
        step()  # allocates the AdamW state
        step()
    synchronize(args.device)
    peak = torch.cuda.max_memory_allocated() - base if cuda else _peak_rss() - base
    print(json.dumps({"peak_bytes": int(peak)}))


def measure_memory(args, model: str, workload: str) -> int:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--preset",
        args.preset,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--_memory-model",
        model,
        "--_memory-workload",
        workload,
    ]
    if args.attn:
        cmd += ["--attn", args.attn]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory worker failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


# ----------------------------------------------------------------------------------------------------------------
# Optional checks: torch.compile and bf16 on CPU
# ----------------------------------------------------------------------------------------------------------------


def check_compile(preset, device, new_tokens) -> dict[str, Any]:
    import torch._dynamo

    out: dict[str, Any] = {}
    models = build_models(preset, device, torch.float32, None, which=("parrot",))
    parrot = models["parrot"]
    moe = parrot.model.moe
    config = parrot.config
    hidden = config.text_config.hidden_size
    features = torch.randn(2, config.image_seq_length, hidden, device=device)
    text = torch.randn(2, 12, hidden, device=device)
    guidance = torch.ones(2, 12, dtype=torch.bool, device=device)
    image_to_sample = torch.arange(2, device=device)
    moe_args = (features, text, guidance, image_to_sample)

    for top_k in (None, 1):
        moe.top_k = top_k
        tag = "dense" if top_k is None else f"top{top_k}"
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(moe)(*moe_args)
        out[f"moe_{tag}_graph_breaks"] = int(explanation.graph_break_count)
        out[f"moe_{tag}_graphs"] = int(explanation.graph_count)
        out[f"moe_{tag}_break_reasons"] = [str(reason.reason)[:200] for reason in explanation.break_reasons]
        try:
            torch._dynamo.reset()
            compiled = torch.compile(moe, fullgraph=True)
            with torch.no_grad():
                eager_out, _ = moe(*moe_args)
                compiled_out, _ = compiled(*moe_args)
            out[f"moe_{tag}_fullgraph_compile_ok"] = True
            out[f"moe_{tag}_compiled_max_abs_diff"] = float((eager_out - compiled_out).abs().max())
        except Exception as error:  # noqa: BLE001 - report, don't crash the benchmark
            out[f"moe_{tag}_fullgraph_compile_ok"] = False
            out[f"moe_{tag}_fullgraph_compile_error"] = repr(error)[:500]
    moe.top_k = config.moe_top_k

    # Whole model: compiled forward + static cache generates the eager tokens.
    inputs = make_inputs(preset, 1, device, torch.float32)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.inference_mode():
        eager_tokens = parrot.generate(**inputs, **kwargs)
    try:
        with torch.inference_mode():
            eager_static = parrot.generate(**inputs, cache_implementation="static", **kwargs)
        out["model_eager_static_same_tokens"] = bool(torch.equal(eager_static, eager_tokens))
    except Exception as error:  # noqa: BLE001
        out["model_eager_static_same_tokens"] = False
        out["model_eager_static_error"] = repr(error)[:500]
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(parrot.forward)(**inputs, logits_to_keep=1)
    out["model_prefill_graph_breaks"] = int(explanation.graph_break_count)
    out["model_prefill_break_reasons"] = [str(reason.reason)[:200] for reason in explanation.break_reasons][:10]
    torch._dynamo.reset()
    eager_forward = parrot.forward
    parrot.forward = torch.compile(parrot.forward)
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            compiled_tokens = parrot.generate(**inputs, cache_implementation="static", **kwargs)
        out["model_compile_generate_s"] = time.perf_counter() - start
        out["model_compile_static_same_tokens"] = bool(torch.equal(compiled_tokens, eager_tokens))
    except Exception as error:  # noqa: BLE001
        out["model_compile_static_same_tokens"] = False
        out["model_compile_error"] = repr(error)[:500]
    finally:
        parrot.forward = eager_forward
        torch._dynamo.reset()

    # bf16 on CPU (or the given device).
    try:
        with torch.inference_mode():
            logits32 = parrot(**inputs).logits
            bf16 = copy.deepcopy(parrot).to(torch.bfloat16)
            inputs16 = {**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}
            logits16 = bf16(**inputs16).logits.float()
            tokens16 = bf16.generate(**inputs16, **kwargs)
        cosine = torch.nn.functional.cosine_similarity(logits16.flatten(), logits32.flatten(), dim=0)
        out["bf16_ok"] = bool(torch.isfinite(logits16).all()) and tokens16.shape == eager_tokens.shape
        out["bf16_logits_cosine_vs_fp32"] = float(cosine)
        out["bf16_same_tokens_as_fp32"] = bool(torch.equal(tokens16, eager_tokens))
    except Exception as error:  # noqa: BLE001
        out["bf16_ok"] = False
        out["bf16_error"] = repr(error)[:500]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each ratio's limit. Prefill: 1 + the MoE's FLOP share + 0.05; SFT step: Parrot/LLaVA training FLOPs + 0.08;
    MoE alone: >= 0.90 of plain matmuls, top-1 <= 1.1 / E of dense."""
    flops = result["flops"]
    experts = result["moe"]["moe_shape"]["experts"]
    rows = {
        "prefill_b1": (result["prefill_ratio_b1"], "<=", 1 + flops["moe_flop_share_prefill_b1"] + 0.05),
        "prefill_b8": (result["prefill_ratio_b8"], "<=", 1 + flops["moe_flop_share_prefill_b8"] + 0.05),
        "decode": (result["decode_ratio"], ">=", 0.97),
        "train_step": (
            result["train_step_ratio"],
            "<=",
            flops["parrot_train_flops"] / flops["llava_train_flops"] + 0.08,
        ),
        "moe_matmul_efficiency": (result["moe_matmul_efficiency"], ">=", 0.90),
        "moe_top1_time_ratio": (result["moe_top1_time_ratio"], "<=", 1.1 / experts),
    }
    spreads = result["spreads"]
    return {
        name: {
            "value": value,
            "op": op,
            "limit": limit,
            "met": value <= limit if op == "<=" else value >= limit,
            "per_round": spreads[name],
        }
        for name, (value, op, limit) in rows.items()
    }


def markdown(result: dict[str, Any]) -> str:
    raw = result["raw"]
    env = result["environment"]
    mib = 1024 * 1024
    lines = [
        f"### Parrot vs LLaVA — preset `{result['preset']}`, {env['device']} {result['dtype']}",
        "",
        f"{env['device_name']}, {env['threads']} threads, torch {env['torch']}, transformers {env['transformers']};"
        f" parameters: LLaVA {raw['params']['llava'] / 1e6:.1f}M, Parrot {raw['params']['parrot'] / 1e6:.1f}M;"
        f" {raw['image_seq_length']} visual tokens per image; medians of {result['repeats']} alternated runs.",
        "Shared machines are noisy: the per-round ratios' min-max shows how far one run can be trusted.",
        "",
        "| measure | LLaVA | Parrot | Parrot / LLaVA (medians) | ratio of minima |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("prefill_b1", "prefill, batch 1 (s)"),
        ("prefill_b8", "prefill, batch 8 (s)"),
        ("train_step", f"SFT step, batch {raw['train_batch']}, fwd+bwd+AdamW (s)"),
    ):
        lines.append(
            f"| {label} | {raw[key]['llava_median_s']:.3f} | {raw[key]['parrot_median_s']:.3f} | "
            f"{raw[key]['ratio']:.3f} | {raw[key]['ratio_of_min']:.3f} |"
        )
    dec = raw["decode"]
    lines.append(
        f"| decode, batch 1 (tokens/s) | {dec['llava_tokens_per_s']:.1f} | {dec['parrot_tokens_per_s']:.1f} |"
        f" {result['decode_ratio']:.3f} | |"
    )
    for key, label in (
        ("prefill_b8", "peak memory, prefill batch 8 (MiB)"),
        ("train", f"peak memory, SFT step batch {raw['train_batch']} (MiB)"),
    ):
        if "peak_memory" not in raw:
            break
        mem = raw["peak_memory"][key]
        ratio = "n/a" if mem["ratio"] is None else f"{mem['ratio']:.3f}"
        lines.append(f"| {label} | {mem['llava'] / mib:.0f} | {mem['parrot'] / mib:.0f} | {ratio} | |")
    moe = result["moe"]
    shape = moe["moe_shape"]
    lines += [
        "",
        f"MoE alone ({shape['images']} images × {shape['tokens_per_image']} tokens, hidden {shape['hidden']}, "
        f"intermediate {shape['intermediate']}, {shape['experts']} experts): "
        f"{moe['moe_gflops_per_s']:.1f} GFLOP/s vs {moe['plain_matmul_gflops_per_s']:.1f} GFLOP/s for plain matmuls "
        f"of the same sizes → efficiency {result['moe_matmul_efficiency']:.2f}; "
        f"time with `moe_top_k=1` / dense = {result['moe_top1_time_ratio']:.3f}. "
        f"MoE FLOP share: prefill b1 {result['flops']['moe_flop_share_prefill_b1']:.3f}, "
        f"b8 {result['flops']['moe_flop_share_prefill_b8']:.3f}, training {result['flops']['moe_flop_share_train']:.3f}.",
        "",
        "| target | measured (ratio of medians) | per-round ratio: median [min, max] | limit | met |",
        "|---|---:|---:|---:|:---:|",
    ]
    for name, row in result["targets"].items():
        rounds = row["per_round"]
        lines.append(
            f"| {name} | {row['value']:.3f} | {rounds['median']:.3f} [{rounds['min']:.3f}, {rounds['max']:.3f}] "
            f"| {row['op']} {row['limit']:.3f} | {'yes' if row['met'] else 'no'} |"
        )
    lines += [
        "",
        f"Correctness: Parrot with `use_moe=False` vs LLaVA, max |Δlogits| = "
        f"{result['correctness']['max_abs_diff_use_moe_false']:.2e} "
        f"(bitwise equal: {result['correctness']['bitwise_equal_use_moe_false']}).",
    ]
    if "compile" in result:
        comp = result["compile"]
        lines.append("")
        lines.append(
            "Compile / bf16 checks: "
            + ", ".join(f"{key}={value}" for key, value in comp.items() if not isinstance(value, list))
        )
    return "\n".join(lines) + "\n"


def environment(device: str) -> dict[str, Any]:
    import transformers

    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    return {
        "device": device,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def pick_attention(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None  # transformers' default: SDPA
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2"
    except ImportError:
        return "sdpa"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument(
        "--attn",
        default=None,
        help="attention implementation (default: sdpa; flash_attention_2 on CUDA when flash-attn is installed)",
    )
    parser.add_argument(
        "--json", help="where to write the JSON results (default: benchmarks/results/<preset>_<device type>.json)"
    )
    parser.add_argument(
        "--markdown",
        default=None,
        help="where to write the Markdown table (default: the --json path with .md when --json is not given)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (preset default)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--check-compile", action="store_true", help="torch.compile / static cache / bf16 checks")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--_memory-model", dest="memory_model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_memory-workload", dest="memory_workload", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.attn is None:
        args.attn = pick_attention(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_model:
        memory_worker(args)
        return {}
    if not args.json:
        args.json = os.path.join(RESULTS_DIR, f"{args.preset}_{torch.device(args.device).type}.json")
        args.markdown = args.markdown or os.path.splitext(args.json)[0] + ".md"

    preset = PRESETS[args.preset]
    repeats = args.repeats or preset["repeats"]
    device, dtype = args.device, DTYPES[args.dtype]
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    inputs_b1 = make_inputs(preset, 1, device, dtype)
    inputs_b8 = make_inputs(preset, 8, device, dtype)
    train_inputs = make_inputs(preset, preset["train_batch"], device, dtype, with_answer=True)

    log("FLOP counts")
    flops = measure_flop_shares(preset, device, dtype, inputs_b1, inputs_b8, train_inputs)
    models = build_models(preset, device, dtype, args.attn)
    raw: dict[str, Any] = {
        "params": {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()},
        "image_seq_length": models["parrot"].config.image_seq_length,
        "prompt_length": int(inputs_b1["input_ids"].shape[1]),
        "train_sequence_length": int(train_inputs["input_ids"].shape[1]),
        "train_batch": preset["train_batch"],
        "attn_implementation": args.attn or "sdpa",
    }
    log("correctness")
    correctness = check_identical_without_moe(models, inputs_b1)

    def summarize(samples):
        return {
            "parrot_median_s": median(samples["parrot"]),
            "llava_median_s": median(samples["llava"]),
            "ratio": median(samples["parrot"]) / median(samples["llava"]),
            "ratio_of_min": min(samples["parrot"]) / min(samples["llava"]),
            "ratio_spread": spread(samples["parrot"], samples["llava"]),
            "samples": samples,
        }

    log("prefill b1")
    raw["prefill_b1"] = summarize(measure_prefill(models, inputs_b1, device, repeats))
    log("prefill b8")
    raw["prefill_b8"] = summarize(measure_prefill(models, inputs_b8, device, repeats))
    log("decode")
    raw["decode"] = measure_decode(models, inputs_b1, preset["new_tokens"], device, repeats)
    log("MoE alone")
    moe = measure_moe(models["parrot"], preset, device, dtype, repeats)
    log("train step")
    raw["train_step"] = summarize(measure_train(models, train_inputs, device, repeats))
    del models
    gc.collect()

    if not args.skip_memory:
        log("peak memory (subprocesses)")
        raw["peak_memory"] = {
            "method": "CUDA max_memory_allocated"
            if device.startswith("cuda")
            else "peak RSS (VmHWM, reset via /proc/self/clear_refs) of a fresh subprocess minus its RSS "
            "just before the model is built: weights + optimizer state + peak activations"
        }
        for workload in ("prefill_b8", "train"):
            mem = {name: measure_memory(args, name, workload) for name in ("llava", "parrot")}
            mem["ratio"] = mem["parrot"] / mem["llava"] if mem["llava"] > 0 else None  # tiny: below RSS noise
            raw["peak_memory"][workload] = mem

    result: dict[str, Any] = {
        "preset": args.preset,
        "dtype": args.dtype,
        "repeats": repeats,
        "command": " ".join(["python"] + sys.argv),
        "environment": environment(device),
        "prefill_ratio_b1": raw["prefill_b1"]["ratio"],
        "prefill_ratio_b8": raw["prefill_b8"]["ratio"],
        "decode_ratio": raw["decode"]["parrot_tokens_per_s"] / raw["decode"]["llava_tokens_per_s"],
        "train_step_ratio": raw["train_step"]["ratio"],
        "peak_memory_ratio": raw["peak_memory"]["prefill_b8"]["ratio"] if "peak_memory" in raw else None,
        "peak_memory_ratio_train": raw["peak_memory"]["train"]["ratio"] if "peak_memory" in raw else None,
        "moe_flop_share": flops["moe_flop_share_prefill_b8"],
        "moe_matmul_efficiency": moe["moe_matmul_efficiency"],
        "moe_top1_time_ratio": moe["moe_top1_time_ratio"],
        "spreads": {
            "prefill_b1": raw["prefill_b1"]["ratio_spread"],
            "prefill_b8": raw["prefill_b8"]["ratio_spread"],
            "decode": spread(raw["decode"]["llava_decode_round_s"], raw["decode"]["parrot_decode_round_s"]),
            "train_step": raw["train_step"]["ratio_spread"],
            "moe_matmul_efficiency": moe["moe_matmul_efficiency_spread"],
            "moe_top1_time_ratio": moe["moe_top1_time_ratio_spread"],
        },
        "moe": moe,
        "flops": flops,
        "correctness": correctness,
        "raw": raw,
    }
    result["targets"] = targets(result)
    if args.check_compile:
        log("compile / bf16 checks")
        result["compile"] = check_compile(preset, device, min(preset["new_tokens"], 8))
    result["wall_s"] = time.perf_counter() - started

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2)
    text = markdown(result)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    print(text)
    log("done")
    return result


if __name__ == "__main__":
    main()
