"""The built-in benchmarks (MMMB, multilingual MMBench): where the Hub dataset keeps them, their display names, and
the Hub model-card ``model-index`` fragment of their results (written by the evaluator, read by the model card).

A leaf module: it imports nothing from the rest of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

HUB_DATASET_REPO = "AIDC-AI/Parrot-dataset"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    hub_template: str | None  # path inside the Hub dataset repo, with {code} = file language code
    circular: bool
    display_name: str


BENCHMARKS = {
    "mmmb": BenchmarkSpec("mmmb", "mmmb/mmmb_{code}.tsv", circular=False, display_name="MMMB"),
    "mmbench": BenchmarkSpec("mmbench", "mmbench/mmbench_dev_{code}.tsv", circular=True, display_name="MMBench"),
}


def is_builtin_benchmark(name: str) -> bool:
    return str(name).lower() in BENCHMARKS


def display_name(benchmark: str) -> str:
    spec = BENCHMARKS.get(benchmark.lower())
    return spec.display_name if spec else benchmark


def model_index(results: Mapping, model_name: str = "model") -> dict:
    """A Hub model-card ``model-index`` fragment (one entry per benchmark and language)."""
    entries = []
    for b, per_lang in results.items():
        builtin = b in BENCHMARKS
        for l, r in per_lang.items():
            dataset = {"name": f"{display_name(b)} ({l})", "type": HUB_DATASET_REPO if builtin else b}
            if builtin:
                dataset["config"] = b
                dataset["split"] = l
            entries.append(
                {
                    "task": {"type": "visual-question-answering", "name": "Multilingual multiple-choice VQA"},
                    "dataset": dataset,
                    "metrics": [
                        {
                            "type": "accuracy",
                            "value": round(float(r["overall"]), 2),
                            "name": "Accuracy (circular)" if r.get("circular") else "Accuracy",
                        }
                    ],
                }
            )
    return {"model-index": [{"name": model_name, "results": entries}]}
