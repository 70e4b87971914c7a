"""The demo's figures, drawn with matplotlib's object API (`Figure` + Agg canvas): no pyplot, no global backend
switch, so the demo is safe to call from notebooks and GUI applications."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

CHANCE = 25.0  # 4-way multiple choice


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="tight")


def _save(fig, path: Path) -> None:
    fig.savefig(path, metadata={"Software": None})


def plot_routing(routing: Mapping[str, Sequence[float]], path: Path) -> None:
    """Heatmap of the mean routing weight per expert (columns) for each language (rows), uniform marked in the
    colour bar."""
    import numpy as np

    languages = list(routing)
    matrix = np.array([routing[lang] for lang in languages], dtype=float)
    experts = matrix.shape[1]
    fig = _figure(1.1 * experts + 2.2, 0.55 * len(languages) + 1.7)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(matrix.max()), 1e-6))
    ax.set_xticks(range(experts), [f"expert {e}" for e in range(experts)], rotation=30)
    ax.set_yticks(range(len(languages)), languages)
    for i in range(matrix.shape[0]):
        for j in range(experts):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] < 0.6 * matrix.max() else "black",
            )
    ax.set_title(f"Mean MoE routing weight per language (uniform = {1 / experts:.2f})")
    bar = fig.colorbar(image, ax=ax, fraction=0.04)
    bar.ax.axhline(1 / experts, color="red", linewidth=1)
    _save(fig, path)


def plot_accuracy(
    accuracy_by_kind: Mapping[str, Mapping[str, float]], accuracy: Mapping[str, float], path: Path, target: float
) -> None:
    """Grouped bars: held-out accuracy per language, one bar per question kind plus the overall score."""
    import numpy as np

    languages = list(accuracy)
    kinds = sorted({k for per in accuracy_by_kind.values() for k in per})
    series = [(kind, [accuracy_by_kind[lang].get(kind, 0.0) for lang in languages]) for kind in kinds]
    series.append(("overall", [accuracy[lang] for lang in languages]))
    fig = _figure(7.5, 3.6)
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(languages))
    for i, (name, values) in enumerate(series):
        bars = ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            label=name,
            color="#1f3b73" if name == "overall" else None,
        )
        if name == "overall":
            for bar, value in zip(bars, values):
                ax.text(bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.0f}", ha="center", fontsize=7)
    ax.axhline(CHANCE, color="grey", linestyle=":", label=f"chance ({CHANCE:.0f}%)")
    ax.axhline(target, color="#d62728", linestyle="--", linewidth=1, label=f"target ({target:.0f}%)")
    ax.set_xticks(x, languages)
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Held-out multiple-choice accuracy per language and question kind")
    ax.legend(loc="lower left", fontsize=7, ncols=4)
    _save(fig, path)


def plot_loss(log: Sequence[Mapping], path: Path) -> None:
    """Training loss of both stages on one step axis (stage 2 continues after stage 1's last step)."""
    fig = _figure(6.0, 3.4)
    ax = fig.subplots()
    offset = 0
    for stage in (1, 2):
        points = [(e["step"] + offset, e["loss"]) for e in log if e.get("stage") == stage and "loss" in e]
        if points:
            ax.plot(*zip(*points), marker=".", markersize=3, label=f"stage {stage}")
        offset += max((e["step"] for e in log if e.get("stage") == stage and "step" in e), default=0)
    ax.set_xlabel("optimizer step (both stages)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    _save(fig, path)
