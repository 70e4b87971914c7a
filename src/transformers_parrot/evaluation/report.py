"""Reports: results.json, CSV and Markdown tables (languages as columns), a bar chart, a Hub model-index fragment."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

from transformers.utils.logging import get_logger

from ..benchmark_specs import display_name, model_index
from ..languages import LANGUAGE_NAMES, LANGUAGES
from .io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = get_logger(__name__)

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
PLOT_PNG = "accuracy_by_language.png"
MODEL_INDEX_JSON = "model_index.json"
SKIPPED_JSON = "skipped.json"

# Paper numbers (Parrot, arXiv 2406.02539: MMMB and multilingual MMBench tables), for comparison tables.
PAPER_RESULTS = {
    "Parrot-7B (paper)": {
        "mmmb": dict(zip(LANGUAGES, (70.00, 68.13, 67.31, 62.69, 58.01, 66.26))),
        "mmbench": dict(zip(LANGUAGES, (70.70, 70.36, 65.12, 57.82, 58.43, 64.00))),
    },
    "Parrot-14B (paper)": {
        "mmmb": dict(zip(LANGUAGES, (73.92, 71.64, 69.82, 68.13, 64.33, 70.18))),
        "mmbench": dict(zip(LANGUAGES, (74.40, 72.25, 69.16, 66.15, 64.52, 69.33))),
    },
    "LLaVA-1.5-7B (paper)": {
        "mmmb": dict(zip(LANGUAGES, (67.07, 58.83, 59.76, 43.50, 46.43, 59.06))),
        "mmbench": dict(zip(LANGUAGES, (65.37, 58.33, 59.02, 36.16, 43.90, 56.95))),
    },
}


def _lang_order(langs) -> list[str]:
    return sorted(set(langs), key=lambda l: (LANGUAGES.index(l) if l in LANGUAGES else 99, l))


def _fmt(v) -> str:
    return "" if v is None else f"{float(v):.2f}"


def merge_results(existing: Mapping, new: Mapping) -> dict:
    """Merge per benchmark and language (a new language result replaces the old one)."""
    out = {b: dict(v) for b, v in existing.items()}
    for b, langs in new.items():
        merged = dict(out.get(b, {}))
        merged.update(langs)
        out[b] = {l: merged[l] for l in _lang_order(merged)}
    return out


def table_rows(results: Mapping) -> tuple[list[str], list[list[str]]]:
    """Rows ``[benchmark, breakdown, name, acc per language...]`` and the language columns."""
    langs = _lang_order(l for b in results.values() for l in b)
    rows: list[list[str]] = []
    for bench, per_lang in results.items():
        rows.append(
            [bench, "overall", "overall"]
            + [_fmt(per_lang.get(l, {}).get("overall")) if l in per_lang else "" for l in langs]
        )
        for key in ("category", "l2-category"):
            names = sorted({n for r in per_lang.values() for n in r.get(key, {})})
            for n in names:
                rows.append(
                    [bench, key, n]
                    + [
                        _fmt(per_lang[l].get(key, {}).get(n))
                        if l in per_lang and n in per_lang[l].get(key, {})
                        else ""
                        for l in langs
                    ]
                )
        rows.append(
            [bench, "count", "questions"]
            + [str(per_lang[l].get("questions", per_lang[l].get("n", ""))) if l in per_lang else "" for l in langs]
        )
        rows.append(
            [bench, "count", "skipped"] + [str(per_lang[l].get("skipped", 0)) if l in per_lang else "" for l in langs]
        )
    return langs, rows


def results_csv(results: Mapping) -> str:
    langs, rows = table_rows(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["benchmark", "breakdown", "name"] + langs)
    w.writerows(rows)
    return buf.getvalue()


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: object) -> str:
        return str(s).replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def results_markdown(results: Mapping, model_name: str = "model", compare_paper: bool = True) -> str:
    """A summary table laid out like the paper's (benchmark x language columns) plus per-benchmark breakdowns."""
    out = [
        f"# Evaluation results: {model_name}\n\n",
        "Accuracy (%), exact matching; MMBench with circular evaluation.\n\n",
    ]
    benches = list(results)
    header = ["model"]
    cols = []
    for b in benches:
        langs = _lang_order(results[b])
        for i, l in enumerate(langs):
            header.append(f"{display_name(b)} {l}" if i == 0 else l)
            cols.append((b, l))
    summary = [[model_name] + [_fmt(results[b][l].get("overall")) for b, l in cols]]
    if compare_paper and all(b in ("mmmb", "mmbench") for b in benches):
        for ref, vals in PAPER_RESULTS.items():
            summary.append([ref] + [_fmt(vals[b].get(l)) for b, l in cols])
    out.append("## Summary\n\n")
    out.append(_md_table(header, summary))
    for b in benches:
        langs = _lang_order(results[b])
        out.append(f"\n## {display_name(b)}\n\n")
        rows = [["overall"] + [_fmt(results[b][l].get("overall")) for l in langs]]
        for key in ("category", "l2-category"):
            names = sorted({n for l in langs for n in results[b][l].get(key, {})})
            if names:
                rows.append([f"**{key}**"] + [""] * len(langs))
            for n in names:
                rows.append(
                    [n]
                    + [
                        _fmt(results[b][l].get(key, {}).get(n)) if n in results[b][l].get(key, {}) else ""
                        for l in langs
                    ]
                )
        rows.append(["questions"] + [str(results[b][l].get("questions", results[b][l].get("n", ""))) for l in langs])
        rows.append(["skipped rows"] + [str(results[b][l].get("skipped", 0)) for l in langs])
        out.append(_md_table([""] + langs, rows))
    return "".join(out)


def plot_png(results: Mapping, model_name: str = "model") -> bytes:
    """Grouped bar chart: accuracy per language, one bar per benchmark."""
    # Agg canvas on a bare Figure: no pyplot, no global backend switch (safe inside notebooks and GUIs).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benches = list(results)
    langs = _lang_order(l for b in benches for l in results[b])
    fig = Figure(figsize=(max(6.0, 1.2 * len(langs) + 2), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(benches))
    for i, b in enumerate(benches):
        xs = [j + (i - (len(benches) - 1) / 2) * width for j in range(len(langs))]
        ys = [results[b][l]["overall"] if l in results[b] else 0.0 for l in langs]
        ax.bar(xs, ys, width=width, label=display_name(b))
        for x, y, l in zip(xs, ys, langs):
            if l in results[b]:
                ax.text(x, y + 1, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([f"{l}\n{LANGUAGE_NAMES.get(l, l)}" for l in langs], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{model_name}: accuracy per language", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def write_reports(
    output_dir,
    results: Mapping,
    *,
    skipped: Mapping | None = None,
    model_name: str = "model",
    merge: bool = True,
) -> dict:
    """Write all report files atomically; returns the (merged) results that were written."""
    output_dir = Path(output_dir)
    merged = dict(results)
    res_path = output_dir / RESULTS_JSON
    if merge and res_path.exists():
        try:
            merged = merge_results(json.loads(res_path.read_text(encoding="utf-8")), results)
        except ValueError:
            logger.warning("ignoring unreadable %s", res_path)
    atomic_write_json(res_path, merged)
    if skipped is not None:
        skip_path = output_dir / SKIPPED_JSON
        old = {}
        if merge and skip_path.exists():
            try:
                old = json.loads(skip_path.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
        old.update({k: list(v) for k, v in skipped.items()})
        atomic_write_json(skip_path, old)
    atomic_write_text(output_dir / RESULTS_CSV, results_csv(merged))
    atomic_write_text(output_dir / RESULTS_MD, results_markdown(merged, model_name))
    try:
        atomic_write_bytes(output_dir / PLOT_PNG, plot_png(merged, model_name))
    except Exception as e:  # a plotting problem must not lose the results
        logger.warning("could not draw %s: %s", PLOT_PNG, e)
    atomic_write_json(output_dir / MODEL_INDEX_JSON, model_index(merged, model_name))
    return merged
