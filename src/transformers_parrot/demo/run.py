"""`parrot-demo`: train a small Parrot from scratch on a generated multilingual VQA task, evaluate it per language
with `parrot-eval`, and show how its MoE routes each language. Offline, CPU, a few minutes.

Steps (all under `--output`, default ``parrot-demo-output/``):

1. ``data/``: synthetic PIL drawings (shapes, colours, counts, positions) with questions in en zh pt ar tr ru,
   answers in the question's language; stage-1 captions and stage-2 instructions as LLaVA JSON, held-out
   multiple-choice questions as MMMB-format TSVs (``data/test/parrot_demo_{en,cn,pt,ar,tr,ru}.tsv``).
2. A small Parrot built from scratch, trained with the TRL recipes of ``examples/train_sft.py``
   (`transformers_parrot.training.scripts.sft_main`): stage 1 (projector only, MoE bypassed) on captions, then
   stage 2 (projector + MoE + LLM, and the vision tower, which has no pretraining here) on multilingual
   instructions, a mix of Parrot's multiple-choice prompt (answered with the right option's text, which
   parrot-eval's VLMEvalKit matching scores like the letter) and short free-form answers.
3. ``eval/``: `parrot-eval` on the generated TSVs (predictions.jsonl, results.json, tables, accuracy plot).
4. ``model/``: a Hub-ready folder (weights, processor, remote code + auto_map, a model card with the results);
   ``accuracy_by_language.png``, ``routing_heatmap.png`` (mean routing weight per expert per language),
   ``loss.png``, ``loss_log.json`` and ``results.json`` (per-language accuracy, steps, wall time).

The demo's hyperparameters are its own, not the paper's: the paper's learning rates (1e-3 stage 1, 2e-5 stage 2)
are for a pretrained CLIP and LLM, while everything here starts from random weights, so stage 2 uses 1e-3 and
also trains the vision tower.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import LANGUAGES, QUESTIONS, write_test_tsvs, write_training_data
from .model import DemoModelConfig

logger = logging.getLogger("transformers_parrot.demo")


@dataclass
class DemoSettings:
    """Everything that defines a demo run (written to results.json)."""

    output: str = "parrot-demo-output"
    seed: int = 0
    languages: tuple = LANGUAGES
    stage1_steps: int = 10
    stage2_steps: int = 1500
    batch_size: int = 32
    stage1_lr: float = 1e-3
    stage2_lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    images: int = 16000          # training images (each gets `questions_per_image` questions)
    questions_per_image: int = 4
    mc_ratio: float = 0.75      # share of stage-2 samples in Parrot's multiple-choice format
    test_per_kind: int = 25     # held-out MC questions per kind and language (4 kinds)
    eval_batch_size: int = 64
    threads: int | None = 0    # 0: torch's default (all cores); 1 helps on a machine busy with other jobs
    progress: bool = True
    model: DemoModelConfig = field(default_factory=DemoModelConfig)

    @property
    def stage1_samples(self) -> int:
        return min(self.images, self.stage1_steps * self.batch_size)


QUICK = dict(stage1_steps=3, stage2_steps=12, batch_size=8, images=60, test_per_kind=2, eval_batch_size=48)


# ---------------------------------------------------------------------------------------------- helpers
def set_determinism(seed: int, threads: int | None) -> None:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)  # 0/None: torch's default
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # (torch.use_deterministic_algorithms is left off: on CPU the kernels used here are already deterministic for a
    # fixed thread count, and the flag made training steps 1.5x slower)


def _trainer_argv(settings: DemoSettings, stage: int, model_dir: Path, data: Path, out: Path) -> list[str]:
    steps = settings.stage1_steps if stage == 1 else settings.stage2_steps
    argv = [
        "--stage", str(stage), "--model_name_or_path", str(model_dir),
        "--datasets", str(data / ("stage1.json" if stage == 1 else "stage2.json")),
        "--image_folders", str(data / "images"), "--output_dir", str(out),
        "--max_steps", str(steps), "--per_device_train_batch_size", str(settings.batch_size),
        "--learning_rate", str(settings.stage1_lr if stage == 1 else settings.stage2_lr),
        "--warmup_steps", str(settings.warmup_ratio), "--lr_scheduler_type", "cosine",
        "--weight_decay", str(settings.weight_decay), "--max_length", "None",
        "--seed", str(settings.seed), "--data_seed", str(settings.seed),
        "--bf16", "False", "--use_cpu", "True", "--gradient_checkpointing", "False",
        "--dataloader_num_workers", "0", "--report_to", "none", "--save_strategy", "no",
        "--logging_steps", str(max(1, min(10, steps // 10))), "--disable_tqdm", str(not settings.progress),
        "--check_images", "False",  # the demo just wrote them
    ]
    if stage == 2:
        argv += ["--train_vision", "True"]  # no pretrained CLIP here: the tower learns too
    return argv


def _train_stage(settings: DemoSettings, stage: int, model_dir: Path, data: Path, out: Path) -> list[dict]:
    from ..training.scripts import sft_main

    argv = _trainer_argv(settings, stage, model_dir, data, out)
    logger.info("stage %d: python examples/train_sft.py %s", stage, " ".join(argv))
    trainer = sft_main(argv)
    return [{"stage": stage, **entry} for entry in trainer.state.log_history]


def _routing_by_language(model, processor, test_files: dict, per_language: int = 48) -> dict:
    """Mean softmax routing weight per expert for each language, over its held-out MC prompts and images."""
    from ..evaluation.data import load_tsv
    from ..evaluation.prompts import build_sample_prompt
    from ..routing import routing_weights

    out = {}
    for language, path in test_files.items():
        samples, _ = load_tsv(path, language)
        samples = samples[:per_language]
        weights = routing_weights(model, processor, [s.load_image() for s in samples],
                                  [build_sample_prompt(s) for s in samples])
        out[language] = weights.mean(0).tolist()
    return out


def _plot_heatmap(routing: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    languages = list(routing)
    matrix = np.array([routing[lang] for lang in languages])
    fig, ax = plt.subplots(figsize=(1.1 * matrix.shape[1] + 2.0, 0.55 * len(languages) + 1.6), dpi=110)
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(matrix.max()), 1e-6))
    ax.set_xticks(range(matrix.shape[1]), [f"expert {e}" for e in range(matrix.shape[1])], rotation=30)
    ax.set_yticks(range(len(languages)), languages)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                    color="white" if matrix[i, j] < 0.6 * matrix.max() else "black", fontsize=8)
    ax.set_title("Mean MoE routing weight per language")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _plot_accuracy(accuracy: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    languages = list(accuracy)
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    bars = ax.bar(languages, [accuracy[lang] for lang in languages], color="#3b7dd8")
    ax.axhline(25, color="grey", linestyle=":", label="chance (25%)")
    ax.axhline(70, color="#d62728", linestyle="--", linewidth=1, label="target (70%)")
    for bar, lang in zip(bars, languages):
        ax.text(bar.get_x() + bar.get_width() / 2, accuracy[lang] + 1, f"{accuracy[lang]:.1f}", ha="center",
                fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Held-out multiple-choice accuracy per language")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _plot_loss(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    offset = 0
    for stage in (1, 2):
        points = [(e["step"] + offset, e["loss"]) for e in log if e.get("stage") == stage and "loss" in e]
        if points:
            ax.plot(*zip(*points), marker=".", label=f"stage {stage}")
        steps = [e["step"] for e in log if e.get("stage") == stage and "step" in e]
        offset += max(steps, default=0)
    ax.set_xlabel("optimizer step (both stages)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _model_card(model_dir: Path, settings: DemoSettings, config, eval_results: Path, accuracy: dict,
                wall: float) -> None:
    from ..modelcard import write_model_card

    table = "\n".join(f"| {lang} | {acc:.1f} |" for lang, acc in accuracy.items())
    training = (
        "Trained from scratch by `parrot-demo` (transformers-parrot) on a synthetic multilingual visual question "
        "answering task: PIL drawings of 1-4 identical shapes, questions about their colour, shape, count and "
        f"position in {', '.join(settings.languages)}, answers in the question's language.\n\n"
        f"- stage 1 (projector only, MoE bypassed): {settings.stage1_steps} steps, LR {settings.stage1_lr}, "
        "English captions\n"
        f"- stage 2 (projector + MoE + LLM + vision tower): {settings.stage2_steps} steps, LR {settings.stage2_lr}, "
        f"{int(settings.mc_ratio * 100)}% Parrot multiple-choice prompts (answered with the option text), "
        "the rest short free-form answers\n"
        f"- batch {settings.batch_size}, cosine schedule, warmup {settings.warmup_ratio:.0%}, seed {settings.seed}; "
        f"whole run {wall:.0f} s on CPU\n\n"
        "Held-out accuracy (parrot-eval, 4-way multiple choice, chance 25%):\n\n| language | accuracy |\n|---|---|\n"
        + table + "\n\nA toy model for trying the code path end to end: it only knows this synthetic task."
    )
    write_model_card(model_dir, config=config, model_name="parrot-demo", repo_id="parrot-demo",
                     license="apache-2.0", results=eval_results, training=training,
                     languages=list(settings.languages), tags=["parrot-demo", "synthetic"])


# ---------------------------------------------------------------------------------------------- the run
def run_demo(settings: DemoSettings) -> dict:
    """The whole demo; returns the results dict also written to ``{output}/results.json``."""
    start = time.perf_counter()
    out = Path(settings.output)
    if out.exists():
        for name in ("data", "work", "model", "eval"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(settings.seed, settings.threads)
    timings = {}

    # 1. data
    t = time.perf_counter()
    data = out / "data"
    summary = write_training_data(data, settings.seed, settings.images, settings.stage1_samples,
                                  languages=settings.languages, mc_ratio=settings.mc_ratio,
                                  questions_per_image=settings.questions_per_image,
                                  image_size=settings.model.image_size)
    tsvs = write_test_tsvs(data / "test", settings.seed, settings.test_per_kind, languages=settings.languages,
                           image_size=settings.model.image_size)
    test_files = dict(zip(settings.languages, tsvs))
    timings["data_s"] = time.perf_counter() - t
    print(f"[parrot-demo] data: {summary['images']} images, {summary['stage1_samples']} stage-1 captions, "
          f"{summary['stage2_samples']} stage-2 instructions; {len(tsvs)} held-out TSVs "
          f"({settings.test_per_kind * 4} questions each) in {data}", flush=True)

    # 2. model + training (the TRL recipes of examples/train_sft.py)
    from .model import build_demo_model

    t = time.perf_counter()
    work = out / "work"
    model, processor = build_demo_model(settings.seed, settings.model)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(work / "init")
    processor.save_pretrained(work / "init")
    del model
    print(f"[parrot-demo] built a {n_params / 1e6:.2f}M-parameter Parrot from scratch; training stage 1 "
          f"({settings.stage1_steps} steps) and stage 2 ({settings.stage2_steps} steps)", flush=True)
    log = _train_stage(settings, 1, work / "init", data, work / "stage1")
    timings["stage1_s"] = time.perf_counter() - t
    t = time.perf_counter()
    log += _train_stage(settings, 2, work / "stage1", data, work / "stage2")
    timings["stage2_s"] = time.perf_counter() - t
    (out / "loss_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")

    # 3. the Hub-ready folder (remote code + auto_map come with save_pretrained)
    from .. import ParrotForConditionalGeneration, ParrotProcessor

    model_dir = out / "model"
    model = ParrotForConditionalGeneration.from_pretrained(work / "stage2").eval()
    processor = ParrotProcessor.from_pretrained(work / "stage2")
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 16
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    # 4. parrot-eval on the generated TSVs
    from ..evaluation.cli import main as parrot_eval

    t = time.perf_counter()
    eval_dir = out / "eval"
    # one call per language file: parrot-eval keys results by benchmark name, and the six files share one
    # ("parrot_demo"), so a single comma-separated call would keep only the last language; successive calls into
    # the same folder merge per language (predictions.jsonl, results.json, tables and plot cover all six).
    for language, path in test_files.items():
        argv = ["--model", str(model_dir), "--benchmark", str(path), "--languages", language,
                "--output", str(eval_dir), "--batch-size", str(settings.eval_batch_size), "--max-new-tokens", "8",
                "--dtype", "float32", "--device", "cpu", "--model-name", "parrot-demo", "--no-download", "-q"]
        if not settings.progress:
            argv.append("--no-progress")
        print(f"[parrot-demo] parrot-eval {' '.join(argv)}", flush=True)
        if parrot_eval(argv) != 0:
            raise RuntimeError("parrot-eval failed (see the messages above)")
    timings["eval_s"] = time.perf_counter() - t
    eval_results = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
    per_language = eval_results["parrot_demo"]
    from ..evaluation.data import FILE_CODES

    accuracy = {}
    for language in settings.languages:
        entry = per_language.get(language) or per_language.get(FILE_CODES[language])
        accuracy[language] = float(entry["overall"])
    by_kind = {language: (per_language.get(language) or per_language.get(FILE_CODES[language])).get("category")
               for language in settings.languages}

    # 5. routing + plots + card + results
    routing = _routing_by_language(model, processor, test_files)
    _plot_heatmap(routing, out / "routing_heatmap.png")
    _plot_accuracy(accuracy, out / "accuracy_by_language.png")
    _plot_loss(log, out / "loss.png")
    wall = time.perf_counter() - start
    _model_card(model_dir, settings, model.config, eval_dir / "results.json", accuracy, wall)

    settings_dict = asdict(settings)
    settings_dict["languages"] = list(settings.languages)
    results = {
        "accuracy": accuracy,
        "accuracy_by_kind": by_kind,
        "mean_accuracy": sum(accuracy.values()) / len(accuracy),
        "min_accuracy": min(accuracy.values()),
        "routing_mean_weight": routing,
        "steps": {"stage1": settings.stage1_steps, "stage2": settings.stage2_steps},
        "final_loss": {str(s): next((e["loss"] for e in reversed(log) if e.get("stage") == s and "loss" in e),
                                    None) for s in (1, 2)},
        "parameters": n_params,
        "wall_time_s": round(wall, 1),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch_threads": __import__("torch").get_num_threads(),
        "settings": settings_dict,
        "data": summary,
        "model_dir": str(model_dir),
        "eval_dir": str(eval_dir),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)

    print("\n[parrot-demo] held-out multiple-choice accuracy (%, chance 25):")
    print("  " + "  ".join(f"{lang:>5}" for lang in accuracy))
    print("  " + "  ".join(f"{acc:5.1f}" for acc in accuracy.values()))
    from ..routing import format_routing

    import torch

    print("\n[parrot-demo] mean routing weight per expert:")
    print(format_routing(torch.tensor([routing[lang] for lang in routing]), list(routing)))
    print(f"\n[parrot-demo] done in {wall:.0f} s: model in {model_dir} (load with trust_remote_code=True), "
          f"plots and results.json in {out}")
    return results


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = DemoSettings()
    p = argparse.ArgumentParser(
        prog="parrot-demo",
        description="Train a small Parrot from scratch on a generated multilingual VQA task (CPU, a few minutes), "
                    "evaluate it per language with parrot-eval and plot its MoE routing per language.")
    p.add_argument("--output", default=d.output, help=f"output folder (default: {d.output}/)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"stage-2 optimizer steps (default {d.stage2_steps}; with --quick {QUICK['stage2_steps']})")
    p.add_argument("--stage1-steps", type=int, default=None, help=f"stage-1 steps (default {d.stage1_steps})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--languages", default=",".join(d.languages),
                   help="comma-separated subset of en,zh,pt,ar,tr,ru (default: all six)")
    p.add_argument("--samples", type=int, default=None,
                   help=f"training images (default {d.images}; each gets {d.questions_per_image} questions)")
    p.add_argument("--test-per-kind", type=int, default=None,
                   help=f"held-out questions per kind (4 kinds) and language (default {d.test_per_kind})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"stage-2 learning rate (default {d.stage2_lr})")
    p.add_argument("--threads", type=int, default=None, help=f"torch CPU threads (default {d.threads}; 0: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds; accuracy is not the point)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def settings_from_args(args) -> DemoSettings:
    from ..evaluation.data import normalize_language

    base = DemoSettings(**(QUICK if args.quick else {}))
    base.output = args.output
    base.seed = args.seed
    base.languages = tuple(dict.fromkeys(normalize_language(x) for x in args.languages.split(",") if x.strip()))
    for arg, name in (("steps", "stage2_steps"), ("stage1_steps", "stage1_steps"), ("samples", "images"),
                      ("test_per_kind", "test_per_kind"), ("batch_size", "batch_size"), ("lr", "stage2_lr"),
                      ("threads", "threads")):
        value = getattr(args, arg)
        if value is not None:
            setattr(base, name, value)
    base.progress = not args.no_progress
    return base


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "trl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    settings = settings_from_args(args)
    run_demo(settings)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
