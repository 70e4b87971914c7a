#!/usr/bin/env python
"""The five-seed check of `parrot-demo`: with the default settings, every seed must reach the demo's
target accuracy (`transformers_parrot.demo.run.TARGET_ACCURACY`) in every language, within the time budget.

Runs ``parrot-demo --seed S`` (default settings, one fresh process per seed, one after the other so the runs do
not compete for cores) and writes one JSON with the command, the machine, each seed's held-out accuracy per
language and per question kind, its routing summary and its time per stage, and whether every seed passed:

    python benchmarks/bench_demo_seeds.py --json benchmarks/results/demo_seeds.json

Not a test: it takes the demo's full time per seed. Extra arguments after ``--`` go to every `parrot-demo` run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def machine() -> dict:
    import torch
    import transformers

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:  # pragma: no cover
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def run_seed(seed: int, output: Path, extra: list[str], budget_s: float) -> dict:
    command = [
        sys.executable,
        "-m",
        "transformers_parrot.demo.run",
        "--seed",
        str(seed),
        "--output",
        str(output),
        "--no-progress",
        *extra,
    ]
    print(f"$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {
            "seed": seed,
            "ok": False,
            "returncode": proc.returncode,
            "wall_s": round(wall, 1),
            "stderr_tail": proc.stderr[-3000:],
        }
    results = json.loads((output / "results.json").read_text(encoding="utf-8"))
    target = results["target_accuracy"]
    entry = {
        "seed": seed,
        "accuracy": results["accuracy"],
        "accuracy_by_kind": results["accuracy_by_kind"],
        "min_accuracy": results["min_accuracy"],
        "routing_mean_weight": results["routing_mean_weight"],
        "routing_summary": results["routing_summary"],
        "final_loss": results["final_loss"],
        "timings_s": results["timings_s"],
        "wall_s": round(wall, 1),  # the process, imports included
        "torch_threads": results["torch_threads"],
        "load_average_after": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    entry["ok"] = results["min_accuracy"] >= target and wall <= budget_s
    print(
        f"  seed {seed}: "
        + " ".join(f"{lang} {acc:.0f}" for lang, acc in results["accuracy"].items())
        + f"; min {results['min_accuracy']:.0f} (target {target:.0f}); {wall:.0f} s "
        + ("ok" if entry["ok"] else "FAILED"),
        flush=True,
    )
    return entry


def main(argv: list[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    extra = given[given.index("--") + 1 :] if "--" in given else []
    argv = given[: given.index("--")] if "--" in given else given
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--output", default=None, help="keep each seed's demo output under this folder")
    parser.add_argument("--budget-s", type=float, default=600.0, help="time budget per run (default 600 s)")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. how busy the machine was)")
    args = parser.parse_args(argv)
    from transformers_parrot.demo.run import TARGET_ACCURACY

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    info = {
        "command": shlex.join(["python", "benchmarks/bench_demo_seeds.py", *given]),
        "demo_command": "parrot-demo --seed S --no-progress" + (f" {shlex.join(extra)}" if extra else ""),
        "target_accuracy": TARGET_ACCURACY,
        "budget_s": args.budget_s,
        "machine": machine(),
        "note": args.note,
    }
    runs = info["runs"] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output) if args.output else Path(tmp)
        for seed in seeds:
            runs.append(run_seed(seed, root / f"seed{seed}", extra, args.budget_s))
            walls = [r["wall_s"] for r in runs]
            info.update(
                seeds_done=[r["seed"] for r in runs],
                complete=len(runs) == len(seeds),
                all_ok=len(runs) == len(seeds) and all(r["ok"] for r in runs),
                wall_s={"min": min(walls), "max": max(walls), "mean": round(sum(walls) / len(walls), 1)},
            )
            if args.json:  # after every seed, so an interrupted check keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"{sum(r['ok'] for r in runs)}/{len(runs)} seeds reached {TARGET_ACCURACY:.0f}% in every language "
        f"within {args.budget_s:.0f} s (wall {info['wall_s']['min']:.0f}-{info['wall_s']['max']:.0f} s)"
    )
    return 0 if info["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
