#!/usr/bin/env python
"""Our compact LM head against TRL's fused head on the CPU, on `parrot-demo`'s model and batches.

TRL's trainers replace the LM head's loss with a fused head (`trl.trainer.utils.add_fused_lm_head`); off CUDA it
scores every position of the batch through torch tile operations. `transformers_parrot.training.lm_head` scores the
labelled positions only. This script builds the demo's stage-2 model and real stage-2 batches (the demo's data
writer, `load_llava_json`, TRL's vision collator), then

1. proves equality first: loss, per-token log-probabilities and every parameter's gradient of the two heads on the
   same batch (max abs / relative difference; exits 1 if they differ beyond float32 noise);
2. times one training step (forward + backward + AdamW) of each, alternating the two over `--rounds` batches, and
   prints the medians and the ratio TRL / ours.

    python benchmarks/bench_cpu_lm_head.py --threads 2 --json benchmarks/results/cpu_lm_head.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def demo_batches(batch_size: int, count: int, seed: int = 0) -> tuple[object, list[dict]]:
    """The demo's stage-2 model (MoE on) and `count` collated stage-2 batches of `batch_size`."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from transformers_parrot.demo.data import write_training_data
    from transformers_parrot.demo.model import build_demo_model
    from transformers_parrot.training import load_llava_json

    model, processor = build_demo_model(seed)
    model.config.use_moe = True
    folder = Path(tempfile.mkdtemp(prefix="bench-lm-head-"))
    write_training_data(folder, seed, num_images=batch_size * count // 2 + 1, stage1_samples=0)
    dataset = load_llava_json(folder / "stage2.json", folder / "images")
    collator = DataCollatorForVisionLanguageModeling(processor, max_length=None, assistant_only_loss=True)
    rows = [dataset[i] for i in range(len(dataset))]
    batches = [collator(rows[i * batch_size : (i + 1) * batch_size]) for i in range(count)]
    return model.train(), batches


def loss_of(model, batch: dict) -> torch.Tensor:
    """SFTTrainer's loss from the fused output: summed negative log-likelihood over the labelled tokens."""
    out = model(**batch, fused_lm_head=True)
    return -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)


def check_equal(reference, compact, batch: dict) -> dict:
    results = []
    for model in (reference, compact):
        model.zero_grad()
        out = model(**batch, fused_lm_head=True)
        (-out.log_probs.sum() / out.label_mask.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.log_probs.detach(), grads))
    (ref_lp, ref_g), (our_lp, our_g) = results
    grad_abs = max((our_g[n] - ref_g[n]).abs().max().item() for n in ref_g)
    diff = torch.cat([(our_g[n] - ref_g[n]).flatten() for n in ref_g])
    grad_rel = (diff.norm() / torch.cat([g.flatten() for g in ref_g.values()]).norm()).item()
    return {
        "same_parameters_with_gradients": ref_g.keys() == our_g.keys(),
        "log_probs_max_abs_diff": (our_lp - ref_lp).abs().max().item(),
        "grad_max_abs_diff": grad_abs,
        "grad_relative_diff": grad_rel,
    }  # |all gradients' difference| / |TRL's gradients|


def time_steps(models: dict, batches: list[dict]) -> dict[str, list[float]]:
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    times = {name: [] for name in models}
    for i, batch in enumerate(batches):
        for name in list(models) if i % 2 == 0 else list(models)[::-1]:  # alternate who goes first
            start = time.perf_counter()
            loss_of(models[name], batch).backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="the demo's batch (default 32)")
    parser.add_argument("--rounds", type=int, default=20, help="timed batches per head (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from trl.trainer.utils import add_fused_lm_head

    from transformers_parrot.training.lm_head import use_compact_lm_head

    model, batches = demo_batches(args.batch_size, args.rounds + 2)
    outputs = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks for
    trl_head, ours = copy.deepcopy(model), copy.deepcopy(model)
    for m in (trl_head, ours):
        add_fused_lm_head(m, outputs=outputs)
    assert use_compact_lm_head(ours)
    equality = check_equal(trl_head, ours, batches[0])
    print(json.dumps(equality))
    if not (
        equality["same_parameters_with_gradients"]
        and equality["log_probs_max_abs_diff"] < 1e-4
        and equality["grad_relative_diff"] < 1e-4
    ):
        print("the two heads differ: not timing", file=sys.stderr)
        return 1
    times = time_steps({"trl_fused_head": trl_head, "compact_head": ours}, batches[2:])
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    labelled = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    result = {
        "what": "one stage-2 training step (forward + backward + AdamW) of parrot-demo's model on its stage-2 batches",
        "command": "python benchmarks/bench_cpu_lm_head.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "tokens_per_batch": int(batches[0]["input_ids"].numel()),
        "labelled_tokens_per_batch_median": statistics.median(labelled),
        "vocab_size": model.config.text_config.vocab_size,
        "equality": equality,
        "median_step_ms": {k: round(v, 1) for k, v in medians.items()},
        "step_time_ratio_trl_over_ours": round(medians["trl_fused_head"] / medians["compact_head"], 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        import importlib.metadata as md

        result["versions"] = {p: md.version(p) for p in ("transformers", "trl", "torch")}
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
