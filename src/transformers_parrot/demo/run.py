"""`parrot-demo`: train a small Parrot from scratch on a generated multilingual VQA task, evaluate it in every
language with one `evaluate(...)` call, and show how its MoE routes each language. Offline, CPU, a few minutes.

Stages (all under `--output`, default ``parrot-demo-output/``), each with its own progress bar and ETA:

1. data: synthetic PIL drawings (shapes, colours, counts, positions) with questions in en zh pt ar tr ru, answers
   in the question's language; stage-1 English descriptions and stage-2 multilingual descriptions and questions as
   LLaVA JSON, held-out multiple-choice questions as MMMB-format TSVs
   (``data/test/parrot_demo_{en,cn,pt,ar,tr,ru}.tsv``).
2. stage 1 and 3. stage 2: a small Parrot built from scratch (`demo.model`), trained with the library's recipe
   (`transformers_parrot.training.train_sft`, the function behind ``examples/train_sft.py``). Nothing here is
   pretrained, so the vision tower and the LLM train in both stages: stage 1 learns to describe the pictures in
   English and answer English questions about them (MoE bypassed): the paper's English-centric alignment, the
   pictures are never shown with another language; it also teaches every language from text only (a scene written
   in English words, then a question and its answer in one of the six languages: MLAN's language-only data and
   the cross-lingual link a pretrained LLM would bring). Descriptions name every attribute of a picture at once,
   which is what makes the from-scratch tower learn fast and the same way for every seed. Stage 2 switches the MoE
   on and trains on descriptions and questions in every language, with the LLM and the tower at a thirtieth of the
   projector's and MoE's rate, so turning the English-biased visual tokens into language-specific ones is left to
   the MoE: the answers need its routing (`benchmarks/bench_routing_ablation.py`, docs/demo.md). `--fast_llm` is a
   faster-learning LLM recipe (English descriptions only in stage 1, everything at 1e-3 in stage 2): as accurate,
   but the LLM then does the language work itself and the routing is decoration.
4. evaluation: `transformers_parrot.evaluation.evaluate` on the six TSVs in one call (``eval/``), then the
   routing per language and the figures (`demo.plots`).

Outputs: ``model/`` (Hub-ready: weights, processor, remote code + auto_map, a model card with the results),
``eval/`` (predictions, results, tables), ``accuracy_by_language.png``, ``routing_heatmap.png``, ``loss.png``,
``loss_log.json`` and ``results.json``.

The demo's hyperparameters are its own, not the paper's: the paper's learning rates (1e-3 stage 1, 2e-5 stage 2)
are for a pretrained CLIP and LLM, while everything here starts from random weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers.utils.logging import get_logger

from ..cli_utils import add_flag, check_output_folder, first_input_error
from ..languages import LANGUAGES
from .data import write_test_tsvs, write_training_data
from .model import DemoModelConfig

logger = get_logger(__name__)

TARGET_ACCURACY = 75.0  # % per language, the demo's promise for seeds 0-4 at the default settings (docs/demo.md)


@dataclass
class DemoSettings:
    """Everything that defines a demo run (written to results.json)."""

    output: str = "parrot-demo-output"
    seed: int = 0
    languages: tuple = LANGUAGES
    stage1_steps: int = 800
    stage2_steps: int = 1600
    batch_size: int = 32
    stage1_lr: float = 1e-3
    stage2_lr: float = 3e-3  # stage 2: projector + MoE, and the LLM + tower unless stage2_llm_lr is set
    stage2_llm_lr: float | None = 1e-4  # stage 2: the LLM and the vision tower (None: stage2_lr)
    router_lr: float = 0.2  # stage 2, the MoE's router alone: its input (an average of word embeddings) has norm
    # ~0.06 here, so at 1e-3 its logits spread by ~0.01 after 1000 steps: uniform routing
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    images: int = 16000  # training images (each gets `questions_per_image` stage-2 samples)
    questions_per_image: int = 2
    caption_ratio: float = 0.3  # share of stage-2 samples that are descriptions in the sample's language
    stage1_questions: bool = True  # stage 1: an English question about each image besides its description
    stage1_text_ratio: float = 1.0  # stage 1: text-only samples in every language per image (MLAN's language data)
    stage1_text_in_english: bool = True  # ... their scene written in English, the question and answer not
    mc_ratio: float = 0.75  # share of stage-2 questions in Parrot's multiple-choice format
    test_per_kind: int = 25  # held-out MC questions per kind and language (4 kinds)
    eval_batch_size: int = 64
    threads: int | None = 0  # 0: torch's default (all cores); 1 helps on a machine busy with other jobs
    progress: bool = True
    smoke_test: bool = False  # --quick: checks the code path only, the model is not trained long enough to answer
    model: DemoModelConfig = field(default_factory=DemoModelConfig)

    @property
    def stage1_samples(self) -> int:
        return min(self.images, self.stage1_steps * self.batch_size)


# `--fast_llm`: stage 1 on English descriptions only, stage 2 trains everything at 1e-3: as
# accurate (five seeds 98-100 %), but any fixed routing changes no answer by more than a point (docs/demo.md).
FAST_LLM = dict(
    stage1_steps=300,
    stage2_steps=1000,
    stage1_questions=False,
    stage1_text_ratio=0.0,
    stage1_text_in_english=False,
    stage2_lr=1e-3,
    stage2_llm_lr=None,
)
QUICK = dict(
    stage1_steps=3, stage2_steps=12, batch_size=8, images=60, test_per_kind=2, eval_batch_size=48, smoke_test=True
)


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


# ---------------------------------------------------------------------------------------------- progress
class _Stage:
    """One progress display per stage: a tqdm bar (rate, elapsed, ETA) or, without progress, one line at the end."""

    def __init__(self, settings: DemoSettings, number: int, title: str, total: int, unit: str):
        self.title = f"[parrot-demo] {number}/4 {title}"
        self.start = time.perf_counter()
        self.bar = None
        if settings.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.title, unit=unit, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self, message: str) -> float:
        seconds = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()
        print(f"{self.title}: {message} ({seconds:.0f} s)", flush=True)
        return seconds


def _trainer_progress(stage: _Stage):
    """A TrainerCallback that drives `stage` (replacing the trainer's own bar and its printed log dicts)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class StageProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stage.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stage.update(0, loss=f"{float(logs['loss']):.3f}")

    def attach(trainer) -> None:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgress())

    return attach


# ---------------------------------------------------------------------------------------------- training
def _sft_config(settings: DemoSettings, stage: int, output_dir: Path):
    """The library's `ParrotSFTConfig` (paper defaults: loss on the answers only, cosine schedule) with the demo's
    steps, batch and learning rates; activation checkpointing off (the model is tiny: recomputing only costs time)."""
    from ..models.parrot._compat import training_arguments_kwargs
    from ..training.configs import ParrotSFTConfig

    steps = settings.stage1_steps if stage == 1 else settings.stage2_steps
    return ParrotSFTConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.stage1_lr if stage == 1 else settings.stage2_llm_lr or settings.stage2_lr,
        lr_scheduler_type="cosine",
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=False,
        use_cpu=True,
        dataloader_num_workers=0,
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, min(10, steps // 10)),
        disable_tqdm=True,
        **training_arguments_kwargs(warmup_ratio=settings.warmup_ratio, checkpointing=False),
    )


def _train_stage(
    settings: DemoSettings,
    stage: int,
    data: Path,
    output_dir: Path,
    number: int,
    *,
    model=None,
    processor=None,
    model_dir: Path | None = None,
) -> list[dict]:
    """Train one stage with the library's `train_sft` (stage 1 on the in-memory `model`, stage 2 from the
    checkpoint in `model_dir`); saves to `output_dir` and returns the trainer's log, tagged with the stage."""
    from trl import ModelConfig

    from ..training.configs import ParrotScriptArguments
    from ..training.scripts import train_sft

    steps = settings.stage1_steps if stage == 1 else settings.stage2_steps
    if stage == 1:
        what = (
            "vision tower + projector + LLM on English descriptions"
            + (" and questions" if settings.stage1_questions else "")
            + (", text in every language" if settings.stage1_text_ratio else "")
            + ", MoE bypassed"
        )
    else:
        what = "everything, MoE on, on multilingual descriptions and questions"
    progress = _Stage(settings, number, f"stage {stage} ({what})", steps, "step")
    script_args = ParrotScriptArguments(
        stage=stage,
        datasets=[str(data / f"stage{stage}.json")],
        image_folders=[str(data / "images")],
        check_images=False,  # the demo just wrote them
        train_vision=True,
        train_llm=True,  # nothing is pretrained here: the tower and the LLM learn too
        multimodal_lr=settings.stage2_lr if stage == 2 and settings.stage2_llm_lr is not None else None,
        router_lr=settings.router_lr if stage == 2 else None,
    )
    model_args = ModelConfig(model_name_or_path=str(model_dir)) if model_dir is not None else None
    trainer = train_sft(
        script_args,
        _sft_config(settings, stage, output_dir),
        model_args,
        model=model,
        processor=processor,
        before_train=_trainer_progress(progress),
    )
    log = [{"stage": stage, **entry} for entry in trainer.state.log_history]
    loss = next((e["loss"] for e in reversed(log) if "loss" in e), float("nan"))
    progress.close(f"{steps} steps, final loss {loss:.3f}")
    return log


# ---------------------------------------------------------------------------------------------- routing
def routing_by_language(model, processor, test_files: dict, per_language: int = 48) -> dict[str, list[float]]:
    """Mean softmax routing weight per expert for each language, over its held-out MC prompts and images."""
    from ..evaluation.data import load_tsv
    from ..evaluation.prompts import build_sample_prompt
    from ..routing import routing_weights

    out = {}
    for language, path in test_files.items():
        samples, _ = load_tsv(path, language)
        samples = samples[:per_language]
        weights = routing_weights(
            model, processor, [s.load_image() for s in samples], [build_sample_prompt(s) for s in samples]
        )
        out[language] = weights.mean(0).tolist()
    return out


def routing_summary(routing: dict[str, list[float]]) -> dict:
    """How far the per-language mean routing is from uniform (1/E per expert) and from the other languages:
    total-variation distances (0 = identical distributions, 1 = disjoint experts)."""
    languages = list(routing)
    experts = len(next(iter(routing.values())))
    uniform = 1.0 / experts

    def tv(p, q):
        return 0.5 * sum(abs(a - b) for a, b in zip(p, q))

    pairs = [tv(routing[a], routing[b]) for i, a in enumerate(languages) for b in languages[i + 1 :]]
    return {
        "uniform_weight": uniform,
        "max_abs_deviation_from_uniform": max(abs(w - uniform) for ws in routing.values() for w in ws),
        "tv_from_uniform": {lang: tv(routing[lang], [uniform] * experts) for lang in languages},
        "mean_pairwise_tv_between_languages": sum(pairs) / len(pairs) if pairs else 0.0,
        "top_expert": {lang: max(range(experts), key=routing[lang].__getitem__) for lang in languages},
    }


# ---------------------------------------------------------------------------------------------- reporting
def _model_card(
    model_dir: Path, settings: DemoSettings, config, eval_results: Path, accuracy: dict, wall: float
) -> None:
    from ..modelcard import write_model_card

    table = "\n".join(f"| {lang} | {acc:.1f} |" for lang, acc in accuracy.items())
    training = (
        "Trained from scratch by `parrot-demo` (transformers-parrot) on a synthetic multilingual visual question "
        "answering task: PIL drawings of 1-4 identical shapes, questions about their colour, shape, count and "
        f"position in {', '.join(settings.languages)}, answers in the question's language.\n\n"
        f"- stage 1 (vision tower + projector + LLM, MoE bypassed): {settings.stage1_steps} steps, "
        f"LR {settings.stage1_lr}, English descriptions"
        + (" and questions" if settings.stage1_questions else "")
        + (
            f", text-only samples in every language ({settings.stage1_text_ratio:g} per image"
            + (", the scene written in English" if settings.stage1_text_in_english else "")
            + ")"
            if settings.stage1_text_ratio
            else ""
        )
        + "\n"
        f"- stage 2 (everything, MoE on): {settings.stage2_steps} steps, LR {settings.stage2_lr} for projector + MoE "
        f"(the MoE's router {settings.router_lr}), {settings.stage2_llm_lr or settings.stage2_lr} for the LLM and the "
        "vision tower; "
        f"{int(settings.caption_ratio * 100)}% descriptions in the sample's language, the rest questions: "
        f"{int(settings.mc_ratio * 100)}% of them Parrot multiple-choice prompts (answered with the option text), "
        "the others short free-form answers\n"
        f"- batch {settings.batch_size}, cosine schedule, warmup {settings.warmup_ratio:.0%}, seed {settings.seed}; "
        f"whole run {wall:.0f} s on CPU\n\n"
        "Held-out accuracy (4-way multiple choice, chance 25%):\n\n| language | accuracy |\n|---|---|\n"
        + table
        + "\n\nA toy model for trying the code path end to end: it only knows this synthetic task."
        + (
            "\n\n**Smoke test** (`parrot-demo --quick`): trained for a few steps only; it does not answer."
            if settings.smoke_test
            else ""
        )
    )
    write_model_card(
        model_dir,
        config=config,
        model_name="parrot-demo",
        repo_id="parrot-demo",
        license="apache-2.0",
        results=eval_results,
        training=training,
        languages=list(settings.languages),
        tags=["parrot-demo", "synthetic"],
    )


def summary_table(accuracy: dict, by_kind: dict, routing: dict, timings: dict) -> str:
    """The terminal summary: accuracy per kind and language, mean routing per language, time per stage."""
    import torch

    from ..routing import format_routing

    languages = list(accuracy)
    kinds = sorted({k for per in by_kind.values() for k in per})
    width = max(9, *(len(k) for k in kinds))
    lines = [
        "held-out accuracy (%, 4-way multiple choice, chance 25):",
        " " * width + "".join(f"{lang:>7}" for lang in languages),
    ]
    for kind in kinds:
        lines.append(
            f"{kind:<{width}}" + "".join(f"{by_kind[lang].get(kind, float('nan')):7.1f}" for lang in languages)
        )
    lines.append(f"{'overall':<{width}}" + "".join(f"{accuracy[lang]:7.1f}" for lang in languages))
    summary = routing_summary(routing)
    lines += [
        "",
        f"mean MoE routing weight per expert (uniform = {summary['uniform_weight']:.3f}):",
        format_routing(torch.tensor([routing[lang] for lang in routing]), list(routing)),
        "distance from uniform (total variation): "
        + ", ".join(f"{lang} {d:.3f}" for lang, d in summary["tv_from_uniform"].items())
        + f"; between languages (mean pairwise): {summary['mean_pairwise_tv_between_languages']:.3f}",
        "",
        "time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()),
    ]
    return "\n".join(lines)


def list_outputs(folder: Path, depth: int = 1) -> str:
    """The output folder's contents: files with their sizes, sub-folders with their file count and size."""

    def size(n: int) -> str:
        return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB" if n >= 1e3 else f"{n} B"

    def walk(path: Path, level: int) -> list[str]:
        lines = []
        for child in sorted(path.iterdir(), key=lambda p: (p.is_file(), p.name)):
            indent = "  " * (level + 1)
            if child.is_dir():
                files = [f for f in child.rglob("*") if f.is_file()]
                lines.append(
                    f"{indent}{child.name}/  ({len(files)} files, {size(sum(f.stat().st_size for f in files))})"
                )
                if level < depth:
                    lines += walk(child, level + 1)
            else:
                lines.append(f"{indent}{child.name}  ({size(child.stat().st_size)})")
        return lines

    return "\n".join([f"{folder}/", *walk(folder, 0)])


# ---------------------------------------------------------------------------------------------- the run
def run_demo(settings: DemoSettings) -> dict:
    """The whole demo; returns the results dict also written to ``{output}/results.json``."""
    from .. import ParrotForConditionalGeneration, ParrotProcessor
    from ..evaluation import evaluate
    from ..languages import FILE_CODES
    from . import plots
    from .model import build_demo_model

    start = time.perf_counter()
    out = Path(settings.output)
    if out.exists():
        for name in ("data", "work", "model", "eval"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(settings.seed, settings.threads)
    if settings.smoke_test:
        print(
            "[parrot-demo] --quick: a smoke test of the whole code path (seconds). The model trains for "
            f"{settings.stage2_steps} steps only and is not expected to answer: accuracies near 0 are normal. "
            "Run without --quick for a model that learns the task.",
            flush=True,
        )
    timings = {}

    # 1. data
    data = out / "data"
    stage = _Stage(settings, 1, "data (drawings, questions, held-out TSVs)", settings.images, "img")
    summary = write_training_data(
        data,
        settings.seed,
        settings.images,
        settings.stage1_samples,
        languages=settings.languages,
        mc_ratio=settings.mc_ratio,
        caption_ratio=settings.caption_ratio,
        stage1_questions=settings.stage1_questions,
        stage1_text_ratio=settings.stage1_text_ratio,
        stage1_text_in_english=settings.stage1_text_in_english,
        questions_per_image=settings.questions_per_image,
        image_size=settings.model.image_size,
        on_image=stage.update,
    )
    tsvs = write_test_tsvs(
        data / "test",
        settings.seed,
        settings.test_per_kind,
        languages=settings.languages,
        image_size=settings.model.image_size,
    )
    test_files = dict(zip(settings.languages, tsvs))
    timings["data"] = stage.close(
        f"{summary['images']} images, {summary['stage1_samples']} stage-1 samples ({summary['stage1_text_only']} "
        f"text-only), {summary['stage2_samples']} "
        f"stage-2 instructions; {len(tsvs)} held-out TSVs ({settings.test_per_kind * 4} questions each)"
    )

    # 2. + 3. training: the library's SFT recipe, stage 1 then stage 2
    work = out / "work"
    model, processor = build_demo_model(settings.seed, settings.model)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"[parrot-demo] a {n_params / 1e6:.2f}M-parameter Parrot built from scratch "
        f"({settings.model.image_size} px images, {processor.image_seq_length} visual tokens, "
        f"{settings.model.num_experts} experts)",
        flush=True,
    )
    t = time.perf_counter()
    log = _train_stage(settings, 1, data, work / "stage1", 2, model=model, processor=processor)
    timings["stage 1"] = time.perf_counter() - t
    del model
    t = time.perf_counter()
    log += _train_stage(settings, 2, data, work / "stage2", 3, model_dir=work / "stage1")
    timings["stage 2"] = time.perf_counter() - t
    (out / "loss_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")

    # the Hub-ready folder (remote code + auto_map come with save_pretrained), evaluated as saved
    model_dir = out / "model"
    model = ParrotForConditionalGeneration.from_pretrained(work / "stage2").eval()
    processor = ParrotProcessor.from_pretrained(work / "stage2")
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 16
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    shutil.rmtree(work, ignore_errors=True)

    # 4. evaluation: all languages in one call, then routing and figures
    t = time.perf_counter()
    eval_dir = out / "eval"
    n_questions = len(settings.languages) * 4 * settings.test_per_kind
    print(f"[parrot-demo] 4/4 evaluation: {n_questions} held-out questions in {len(tsvs)} languages", flush=True)
    eval_results = evaluate(
        model,
        processor,
        benchmark=[str(p) for p in tsvs],
        output_dir=eval_dir,
        batch_size=settings.eval_batch_size,
        max_new_tokens=8,
        model_name="parrot-demo",
        download=False,
        progress=settings.progress,
        overwrite=True,
    )
    per_language = eval_results["parrot_demo"]

    def entry(language):
        return per_language.get(language) or per_language[FILE_CODES[language]]

    accuracy = {language: float(entry(language)["overall"]) for language in settings.languages}
    by_kind = {language: dict(entry(language).get("category") or {}) for language in settings.languages}
    routing = routing_by_language(model, processor, test_files)
    timings["evaluation"] = time.perf_counter() - t
    print(f"[parrot-demo] 4/4 evaluation: done ({timings['evaluation']:.0f} s)", flush=True)

    plots.plot_routing(routing, out / "routing_heatmap.png")
    plots.plot_accuracy(by_kind, accuracy, out / "accuracy_by_language.png", TARGET_ACCURACY)
    plots.plot_loss(log, out / "loss.png")
    wall = time.perf_counter() - start
    timings["total"] = wall
    _model_card(model_dir, settings, model.config, eval_dir / "results.json", accuracy, wall)

    settings_dict = asdict(settings)
    settings_dict["languages"] = list(settings.languages)
    results = {
        "smoke_test": settings.smoke_test,
        "accuracy": accuracy,
        "accuracy_by_kind": by_kind,
        "mean_accuracy": sum(accuracy.values()) / len(accuracy),
        "min_accuracy": min(accuracy.values()),
        "target_accuracy": TARGET_ACCURACY,
        "routing_mean_weight": routing,
        "routing_summary": routing_summary(routing),
        "steps": {"stage1": settings.stage1_steps, "stage2": settings.stage2_steps},
        "final_loss": {
            str(s): next((e["loss"] for e in reversed(log) if e.get("stage") == s and "loss" in e), None)
            for s in (1, 2)
        },
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

    print("\n" + summary_table(accuracy, by_kind, routing, timings))
    if settings.smoke_test:
        print("(smoke test: the accuracies above are not meaningful; run without --quick to train the model)")
    print("\n[parrot-demo] outputs (load the model with trust_remote_code=True):")
    print(list_outputs(out))
    return results


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = DemoSettings()
    p = argparse.ArgumentParser(
        prog="parrot-demo",
        description="Train a small Parrot from scratch on a generated multilingual VQA task (CPU, a few minutes), "
        "evaluate it per language and plot its MoE routing per language.",
    )
    p.add_argument("--output", default=d.output, help=f"output folder (default: {d.output}/)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"stage-2 optimizer steps (default {d.stage2_steps}; with --quick {QUICK['stage2_steps']})",
    )
    add_flag(p, "stage1_steps", type=int, default=None, help=f"stage-1 steps (default {d.stage1_steps})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--languages",
        default=",".join(d.languages),
        help=f"comma-separated subset of {','.join(LANGUAGES)} (default: all six)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"training images (default {d.images}; each gets {d.questions_per_image} questions)",
    )
    add_flag(
        p,
        "test_per_kind",
        type=int,
        default=None,
        help=f"held-out questions per kind (4 kinds) and language (default {d.test_per_kind})",
    )
    add_flag(p, "batch_size", type=int, default=None, help=f"training batch size (default {d.batch_size})")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"stage-2 learning rate of projector + MoE (default {d.stage2_lr}; with --fast_llm "
        f"{FAST_LLM['stage2_lr']}, for everything)",
    )
    add_flag(
        p,
        "llm_lr",
        type=float,
        default=None,
        help=f"stage-2 learning rate of the LLM and the vision tower (default {d.stage2_llm_lr})",
    )
    add_flag(
        p,
        "fast_llm",
        action="store_true",
        help="English descriptions only in stage 1, everything at 1e-3 in stage 2: as accurate, but the LLM does "
        "the language work and the answers do not need the routing (docs/demo.md)",
    )
    add_flag(
        p,
        "router_lr",
        type=float,
        default=None,
        help=f"stage-2 learning rate of the MoE's router (default {d.router_lr})",
    )
    p.add_argument(
        "--threads", type=int, default=None, help=f"torch CPU threads (default {d.threads}; 0: torch's choice)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of the code path (seconds): the model is not trained long enough to answer",
    )
    add_flag(p, "no_progress", action="store_true", help="no progress bars (one line per stage instead)")
    return p


def parse_languages(text: str) -> tuple[str, ...]:
    """`--languages` → language codes in the demo's order; ValueError naming the unknown ones and the valid set."""
    from ..languages import UnknownLanguageError, normalize_language

    requested, unknown = [], []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            code = normalize_language(item)
        except UnknownLanguageError:
            code = None
        if code in LANGUAGES:
            requested.append(code)
        else:
            unknown.append(item)
    if unknown:
        raise ValueError(
            f"unknown language{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the demo's languages are {', '.join(LANGUAGES)} ('cn' also means zh)"
        )
    if not requested:
        raise ValueError(f"no language given; choose from {', '.join(LANGUAGES)}")
    return tuple(lang for lang in LANGUAGES if lang in requested)


def settings_from_args(args) -> DemoSettings:
    base = DemoSettings(**{**(FAST_LLM if args.fast_llm else {}), **(QUICK if args.quick else {})})
    base.output = args.output
    base.seed = args.seed
    base.languages = parse_languages(args.languages)
    for arg, name in (
        ("steps", "stage2_steps"),
        ("stage1_steps", "stage1_steps"),
        ("samples", "images"),
        ("test_per_kind", "test_per_kind"),
        ("batch_size", "batch_size"),
        ("lr", "stage2_lr"),
        ("llm_lr", "stage2_llm_lr"),
        ("router_lr", "router_lr"),
        ("threads", "threads"),
    ):
        value = getattr(args, arg)
        if value is not None:
            setattr(base, name, value)
    for name in ("stage2_steps", "images", "test_per_kind", "batch_size"):
        if getattr(base, name) < 1:
            raise ValueError(
                f"--{ {'stage2_steps': 'steps', 'images': 'samples'}.get(name, name) } "
                f"must be >= 1, got {getattr(base, name)}"
            )
    base.progress = not args.no_progress
    return base


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = first_input_error(vars(args), {"output": check_output_folder})
    if problem:
        parser.error(problem)  # checked before any data is drawn or written
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))  # usage + "parrot-demo: error: ..." and exit code 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "datasets", "trl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the "Loading weights" bars; the demo shows one bar per stage
    run_demo(settings)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
