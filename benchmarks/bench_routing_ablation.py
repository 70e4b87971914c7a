#!/usr/bin/env python
"""Does a trained `parrot-demo` model need its language-specific routing? Re-evaluates the saved model on its own
held-out TSVs with the router's output replaced: by uniform weights, and by each language's mean routing (so, e.g.,
every Chinese question is routed as English ones are on average). If accuracy does not move, the experts are not
used language-specifically, however different the routing heatmap looks.

    python benchmarks/bench_routing_ablation.py /tmp/seeds/seed0 /tmp/seeds/seed1 \\
        --json benchmarks/results/demo_routing_ablation.json

Each folder is a `parrot-demo --output` folder (``model/``, ``data/test/*.tsv``, ``results.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def evaluate_with_routing(
    model, processor, tsvs: dict[str, Path], weights: list[float] | None, work: Path
) -> dict[str, float]:
    """Held-out accuracy per language with every image routed by `weights` (None: the model's own router)."""
    import torch

    from transformers_parrot.evaluation import evaluate
    from transformers_parrot.languages import FILE_CODES

    handle = None
    if weights is not None:
        fixed = torch.tensor(weights).log()  # softmax(log w) = w
        handle = model.model.moe.gate.register_forward_hook(
            lambda module, args, logits: fixed.to(logits).expand_as(logits)
        )
    try:
        scores = evaluate(
            model,
            processor,
            benchmark=[str(p) for p in tsvs.values()],
            output_dir=work,
            batch_size=64,
            max_new_tokens=8,
            model_name="ablation",
            download=False,
            progress=False,
            overwrite=True,
        )["parrot_demo"]
    finally:
        if handle is not None:
            handle.remove()
    return {lang: float((scores.get(lang) or scores[FILE_CODES[lang]])["overall"]) for lang in tsvs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="parrot-demo output folders")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    from transformers_parrot import ParrotForConditionalGeneration, ParrotProcessor
    from transformers_parrot.languages import FILE_CODES, LANGUAGES

    out = {
        "command": " ".join(["python", "benchmarks/bench_routing_ablation.py", *(argv or sys.argv[1:])]),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.folders:
            routing = json.loads((folder / "results.json").read_text(encoding="utf-8"))["routing_mean_weight"]
            experts = len(next(iter(routing.values())))
            model = ParrotForConditionalGeneration.from_pretrained(folder / "model").eval()  # loaded once per folder
            processor = ParrotProcessor.from_pretrained(folder / "model")
            model.generation_config.do_sample = False
            tsvs = {
                lang: folder / "data" / "test" / f"parrot_demo_{FILE_CODES.get(lang, lang)}.tsv" for lang in LANGUAGES
            }
            tsvs = {lang: path for lang, path in tsvs.items() if path.exists()}
            variants = {
                "own router": None,
                "uniform": [1.0 / experts] * experts,
                **{f"as {lang}": weights for lang, weights in routing.items()},
            }
            accuracy = {
                name: evaluate_with_routing(model, processor, tsvs, weights, Path(tmp) / "eval")
                for name, weights in variants.items()
            }
            own = accuracy["own router"]
            drop = {name: max(0.0, *(own[lang] - acc[lang] for lang in own)) for name, acc in accuracy.items()}
            out["runs"].append({"folder": str(folder), "accuracy": accuracy, "largest_drop_points": drop})
            print(
                f"{folder}: "
                + "; ".join(
                    f"{name}: min {min(acc.values()):.0f} % (largest drop {drop[name]:.0f})"
                    for name, acc in accuracy.items()
                ),
                flush=True,
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
