"""Evaluation throughput: questions/s of `parrot-eval` with the hf backend (batch sizes swept, one process), the hf
backend in 2 processes (torchrun), and the vLLM backend, on a generated MMMB-format TSV and a random Parrot of a
bench_vs_llava.py preset's shapes. Every configuration runs in its own process; each loads its model, warms up, then
times `evaluate` alone (model loading and engine start-up are not counted). The batch-size sweep may run on the
first `--sweep_rows` questions only; the best batch, 2 processes and vLLM then run on all of them, `--rounds` times in
alternating order. Every sweep run's predictions must equal those of batch size 1, and every full run's those of the
best batch (whose first `--sweep_rows` equal batch size 1's), or no ratio is written.

The compute ceiling: the FLOPs of one question (counted with `torch.utils.flop_counter` over the warm-up questions
of the batch-1 run: vision tower, projector, MoE, prefill and decode) times each configuration's questions/s, over
the rate plain float32 matmuls of the LLM's MLP shape reach in this process with the same threads, is the share of
the machine's matmul rate a configuration uses; no backend can beat the best hf batch by more than its inverse.

    python benchmarks/bench_eval.py --preset small --rows 300 --sweep_rows 48 --rounds 3 \
        --vllm_python .venv-vllm/bin/python --json benchmarks/results/eval_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LANGUAGE = "en"
WARMUP_ROWS = 2  # questions each configuration answers before it is timed
PROMPT_TOKENS = 620  # about a question's prompt: 577 visual tokens + the question and its options
# vLLM's CPU backend keeps one core per worker for its scheduler unless told otherwise: on a 2-core machine its model
# would run on 1 thread while hf runs on 2. With none reserved, the worker's threads are bound to every core.
VLLM_CPU_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def presets() -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_vs_llava", HERE / "bench_vs_llava.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PRESETS


def save_model(preset: dict, directory: Path) -> None:
    """A random Parrot with the preset's vision/LLM/MoE shapes over the bundled tiny tokenizer (its vocabulary)."""
    import torch

    from transformers_parrot.models.parrot.modeling_parrot import ParrotForConditionalGeneration
    from transformers_parrot.tiny import config_for_processor, tiny_processor

    vision = dict(preset["vision"])
    text = {k: v for k, v in preset["text"].items() if k != "vocab_size"}
    processor = tiny_processor(image_size=vision["image_size"], patch_size=vision["patch_size"])
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


def write_tsv(path: Path, rows: int, seed: int = 0) -> None:
    """An MMMB-format TSV: `rows` questions with four options over random images (every 4th image repeats)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range((rows + 3) // 4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
        images.append(base64.b64encode(buf.getvalue()).decode())
    words = ["red", "green", "blue", "yellow", "circle", "square", "left", "right", "two", "three"]
    table = [
        {
            "index": i,
            "question": f"Question {i}: which {words[i % 10]} thing is {words[(i * 7) % 10]}?",
            "A": words[i % 10],
            "B": words[(i + 3) % 10],
            "C": words[(i + 5) % 10],
            "D": words[(i + 8) % 10],
            "answer": "ABCD"[i % 4],
            "category": "c",
            "l2-category": "l2",
            "image": images[i // 4],
        }
        for i in range(rows)
    ]
    pd.DataFrame(table).to_csv(path, sep="\t", index=False)


def worker(args) -> None:
    """One timed configuration (run in its own process, or one rank of torchrun); rank 0 prints a JSON line."""
    from transformers_parrot.evaluation import evaluate, runner

    kwargs = {"max_new_tokens": args.max_new_tokens, "dtype": "float32"}
    if args.backend == "vllm":
        kwargs.update(enforce_eager=True, gpu_memory_utilization=args.gpu_memory_utilization)
        if args.max_model_len:
            kwargs["max_model_len"] = args.max_model_len
    predictor = runner.load_predictor(args.model, backend=args.backend, **kwargs)
    settings = dict(
        benchmark=args.tsv,
        languages=LANGUAGE,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        model_name="bench",
        progress=False,
    )
    scratch = Path(args.scratch)  # one folder for all ranks of a data parallel run
    flops = None
    if args.count_flops:
        import torch
        from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

        def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)  # torch counts the CUDA kernels only

        cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        counter = FlopCounterMode(display=False, custom_mapping={cpu_attention: cpu_sdpa})
        with counter:
            evaluate(predictor=predictor, output_dir=scratch / "counted", limit=WARMUP_ROWS, **settings)
        flops = counter.get_total_flops() / WARMUP_ROWS
    evaluate(predictor=predictor, output_dir=scratch / "warmup", limit=WARMUP_ROWS, **settings)
    start = time.perf_counter()
    evaluate(predictor=predictor, output_dir=scratch / "timed", limit=args.limit or None, **settings)
    seconds = time.perf_counter() - start
    lines = (scratch / "timed" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    if int(os.environ.get("RANK", "0")) == 0:
        predictions = [json.loads(line)["prediction"] for line in lines]
        report = {"seconds": seconds, "predictions": predictions, "versions": versions(args.backend)}
        if flops is not None:
            report["flops_per_question"] = flops
        print("BENCH " + json.dumps(report), flush=True)


def versions(backend: str) -> dict:
    """The versions this configuration ran with (the vLLM venv has its own transformers)."""
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if backend == "vllm":
        import vllm

        out["vllm"] = vllm.__version__
    return out


def matmul_rate(preset: dict, threads: int, repeats: int = 30) -> dict:
    """FLOP/s of a plain float32 matmul of the LLM's MLP shape over a question's prompt, (PROMPT_TOKENS, hidden) @
    (hidden, intermediate), on `threads` threads: the median of `repeats` timings after a warm-up."""
    import torch

    torch.set_num_threads(threads)
    m, k, n = PROMPT_TOKENS, preset["text"]["hidden_size"], preset["text"]["intermediate_size"]
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return {"shape": [m, k, n], "threads": threads, "flops_per_s": 2 * m * k * n / statistics.median(times)}


def run_config(command: list[str], env: dict) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run([*command, "--scratch", scratch], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("BENCH "))
    return json.loads(line.removeprefix("BENCH "))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument(
        "--sweep_rows",
        type=int,
        default=0,
        help="questions the batch-size sweep runs on (the first ones; default: all --rows)",
    )
    parser.add_argument("--batch_sizes", default="1,4,8,16")
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument(
        "--max_model_len", type=int, default=0, help="vllm's max_model_len (default: the model's context length)"
    )
    parser.add_argument(
        "--gpu_memory_utilization",
        type=float,
        default=0.2,
        help="vllm: the fraction of memory for its KV cache (on the CPU backend: of the machine's memory)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vllm_python", default=None, help="a Python with vllm-cpu installed (none: vllm skipped)")
    parser.add_argument("--no_two_processes", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=1, help="times each configuration runs (alternating order); medians reported"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--tsv", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="hf", help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count_flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.sweep_rows <= args.rows:
        parser.error(f"--sweep_rows {args.sweep_rows}: give a number from 1 to --rows ({args.rows}), or 0 for all")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give at least 1")
    if "1" not in args.batch_sizes.split(","):
        parser.error(f"--batch_sizes {args.batch_sizes}: include 1 (batch size 1 gives the reference predictions)")
    if args.worker:
        worker(args)
        return {}
    import shutil

    load_at_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        return run_all(args, argv, work, load_at_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args, argv: list[str] | None, work: Path, load_at_start: list[float] | None) -> dict:
    model_dir, tsv = work / "model", work / f"mmmb_{LANGUAGE}.tsv"
    save_model(presets()[args.preset], model_dir)
    write_tsv(tsv, args.rows)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = [
        str(Path(__file__).resolve()),
        "--worker",
        "--model",
        str(model_dir),
        "--tsv",
        str(tsv),
        "--max_new_tokens",
        str(args.max_new_tokens),
        "--max_model_len",
        str(args.max_model_len),
        "--gpu_memory_utilization",
        str(args.gpu_memory_utilization),
    ]
    one = {**env, "OMP_NUM_THREADS": str(args.threads)}
    two = {**env, "OMP_NUM_THREADS": str(max(1, args.threads // 2))}
    batches = [int(b) for b in args.batch_sizes.split(",")]

    def command(name: str, best_batch: int, rows: int) -> tuple[list[str], dict]:
        limit = ["--limit", str(rows)]
        if name == "vllm":
            return [args.vllm_python, *common, *limit, "--backend", "vllm"], {**one, **VLLM_CPU_ENV}
        if name == "hf_2proc":
            launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
            return [*launch, *common, *limit, "--batch_size", str(best_batch)], two
        return [sys.executable, *common, *limit, "--batch_size", name.removeprefix("hf_b")], one

    def measure(name: str, rows: int, best_batch: int = 0) -> dict:
        argv, config_env = command(name, best_batch, rows)
        if name == "hf_b1" and rows == sweep_rows:
            argv = [*argv, "--count_flops"]
        sample = run_config(argv, config_env)
        sample["questions_per_second"] = rows / sample["seconds"]
        print(
            f"{name} ({rows} questions): {sample['questions_per_second']:.2f} questions/s", file=sys.stderr, flush=True
        )
        return sample

    # The sweep fixes the best batch size. Then the best batch, 2 processes and vllm run on all rows, round after
    # round in alternating order (forward, backward, ...), so a slow stretch of a shared machine does not favour one
    # side. A sweep over all rows is the best batch's first round.
    sweep_rows = args.sweep_rows or args.rows
    rate = matmul_rate(presets()[args.preset], args.threads)  # before any configuration runs: an idle machine
    names = [f"hf_b{b}" for b in batches]
    sweep = {name: measure(name, sweep_rows) for name in names}
    best = min(names, key=lambda k: sweep[k]["seconds"])
    best_batch = int(best.removeprefix("hf_b"))
    order = [best] + ([] if args.no_two_processes else ["hf_2proc"]) + (["vllm"] if args.vllm_python else [])
    samples: dict[str, list[dict]] = {best: [sweep[best]]} if sweep_rows == args.rows else {}
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else list(reversed(order)):
            if len(samples.get(name, [])) <= round_:
                samples.setdefault(name, []).append(measure(name, args.rows, best_batch))
    reference = sweep["hf_b1"]["predictions"]
    sweep_equal = {k: r["predictions"] == reference for k, r in sweep.items()}
    full_reference = samples[best][0]["predictions"]
    chained = full_reference[:sweep_rows] == reference
    equal = {k: chained and all(r["predictions"] == full_reference for r in rs) for k, rs in samples.items()}
    per_round = {k: [r["questions_per_second"] for r in rs] for k, rs in samples.items()}
    qps = {k: statistics.median(v) for k, v in per_round.items()}
    given = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["python", "benchmarks/bench_eval.py", *given]),
        "environment": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "vllm_env": VLLM_CPU_ENV,
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "versions": {k: rs[0]["versions"] for k, rs in samples.items()},
        },
        "preset": args.preset,
        "rows": args.rows,
        "max_new_tokens": args.max_new_tokens,
        "sweep": {
            "rows": sweep_rows,
            "questions_per_second": {k: r["questions_per_second"] for k, r in sweep.items()},
            "predictions_equal_hf_b1": sweep_equal,
        },
        "hf_best": best,
        "predictions_equal_hf_best": equal,
        "rounds": args.rounds,
        "questions_per_second": qps,
        "questions_per_second_per_round": per_round,
        "seconds_per_round": {k: [r["seconds"] for r in rs] for k, rs in samples.items()},
    }
    flops = sweep["hf_b1"]["flops_per_question"]
    result["compute"] = {
        "flops_per_question": flops,
        "matmul": rate,
        "share_of_matmul_rate": {k: v * flops / rate["flops_per_s"] for k, v in qps.items()},
        "ceiling_over_hf_best": rate["flops_per_s"] / (qps[best] * flops),
    }
    if all(equal.values()) and all(sweep_equal.values()):
        compared = [k for k in qps if k != best]
        result["ratios_over_hf_best"] = {k: qps[k] / qps[best] for k in compared}
        result["ratio_spread_over_rounds"] = {
            k: {"min": min(ratios), "max": max(ratios), "rounds": len(ratios)}
            for k in compared
            for ratios in [[a / b for a, b in zip(per_round[k], per_round[best])]]
        }
    else:
        result["ratios_over_hf_best"] = None  # predictions differ: no speed comparison
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    return result


if __name__ == "__main__":
    main()
