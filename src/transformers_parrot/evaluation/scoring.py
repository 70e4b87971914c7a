"""Scoring, as VLMEvalKit scores the Parrot paper's benchmarks: MMMB plain accuracy, MMBench circular evaluation.

Circular evaluation: the circular shifts of one question share ``index % 1_000_000``; a question counts as
correct only if every variant present is answered correctly. Accuracies are in percent, overall, per
``category`` and per ``l2-category`` (a question's categories are those of its lowest-index row, i.e. the
original ordering).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping

from .data import CIRCULAR_MODULUS, LANGUAGES


def _pct(hits: int, total: int) -> float:
    return 100.0 * hits / total if total else 0.0


def question_units(records: Iterable[Mapping], circular: bool) -> list[dict]:
    """Collapse scored rows into scoring units (rows, or circular groups) with ``hit``/category fields."""
    records = list(records)
    if not circular:
        return [
            {"hit": bool(r["hit"]), "category": r.get("category"), "l2-category": r.get("l2-category"), "rows": 1}
            for r in records
        ]
    groups: OrderedDict[int, list[Mapping]] = OrderedDict()
    for r in records:
        groups.setdefault(int(r["index"]) % CIRCULAR_MODULUS, []).append(r)
    units = []
    for _, rows in groups.items():
        main = min(rows, key=lambda r: int(r["index"]))
        units.append(
            {
                "hit": all(bool(r["hit"]) for r in rows),
                "category": main.get("category"),
                "l2-category": main.get("l2-category"),
                "rows": len(rows),
            }
        )
    return units


def _breakdown(units: list[dict], key: str) -> dict[str, float]:
    tot: dict[str, int] = defaultdict(int)
    hit: dict[str, int] = defaultdict(int)
    for u in units:
        name = u.get(key)
        if name is None or str(name) == "":
            continue
        tot[str(name)] += 1
        hit[str(name)] += int(u["hit"])
    return {k: _pct(hit[k], tot[k]) for k in sorted(tot)}


def score_rows(records: Iterable[Mapping], circular: bool, skipped: int = 0) -> dict:
    """Score the rows of one language.

    Returns ``{"overall", "category", "l2-category", "n" (rows scored), "questions" (scoring units: rows, or
    circular groups), "correct", "skipped"}``.
    """
    records = list(records)
    units = question_units(records, circular)
    correct = sum(int(u["hit"]) for u in units)
    return {
        "overall": _pct(correct, len(units)),
        "category": _breakdown(units, "category"),
        "l2-category": _breakdown(units, "l2-category"),
        "n": len(records),
        "questions": len(units),
        "correct": correct,
        "skipped": int(skipped),
        "circular": bool(circular),
    }


def score_benchmark(
    records: Iterable[Mapping],
    circular: bool,
    skipped: Mapping[str, int] | None = None,
    languages: Iterable[str] | None = None,
) -> dict[str, dict]:
    """Score rows of several languages: ``{language: score_rows(...)}`` in paper language order."""
    by_lang: dict[str, list[Mapping]] = defaultdict(list)
    for r in records:
        by_lang[r["language"]].append(r)
    skipped = dict(skipped or {})
    langs = (
        list(languages)
        if languages is not None
        else sorted(set(by_lang) | set(skipped), key=lambda l: (LANGUAGES.index(l) if l in LANGUAGES else 99, l))
    )
    return {l: score_rows(by_lang.get(l, []), circular, skipped.get(l, 0)) for l in langs}
