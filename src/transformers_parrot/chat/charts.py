"""Routing bar charts as self-contained inline SVG (no plotting library, renders inside chat messages)."""

from __future__ import annotations

from html import escape

BAR_WIDTH = 26
BAR_GAP = 8
PLOT_HEIGHT = 90
MARGIN = 6


def routing_chart(weights: list[float], title: str = "", bar_width: int = BAR_WIDTH, gap: int = BAR_GAP) -> str:
    """An SVG bar chart: one bar (`rect.parrot-bar`) per expert, the largest weight at full height, the uniform
    weight 1/E as a dashed line, each bar labelled with its expert index and weight (two decimals; six in the
    bar's tooltip, `expert i: w`). Only attributes the chat's HTML sanitizer keeps are used."""
    n = len(weights)
    width = MARGIN * 2 + n * bar_width + (n - 1) * gap
    bottom = 14 + PLOT_HEIGHT
    height = bottom + 18
    parts = [
        f'<svg class="parrot-routing-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
    ]
    if title:
        parts.append(f"<title>{escape(title)}</title>")
    scale = PLOT_HEIGHT / max(max(weights, default=0.0), 1.0 / max(n, 1))
    uniform = bottom - scale / max(n, 1)
    parts.append(
        f'<line x1="0" x2="{width}" y1="{uniform:.1f}" y2="{uniform:.1f}" stroke="#999" '
        f'stroke-dasharray="3,3" stroke-width="1"/>'
    )
    best = max(range(n), key=lambda i: weights[i]) if n else -1
    for i, weight in enumerate(weights):
        x = MARGIN + i * (bar_width + gap)
        h = max(0.0, weight) * scale
        colour = "#e8590c" if i == best else "#4c6ef5"
        parts.append(
            f'<rect class="parrot-bar" x="{x}" y="{bottom - h:.1f}" width="{bar_width}" height="{h:.1f}" '
            f'fill="{colour}"><title>expert {i}: {weight:.6f}</title></rect>'
        )
        parts.append(
            f'<text x="{x + bar_width / 2}" y="{bottom - h - 3:.1f}" font-size="9" text-anchor="middle" '
            f'fill="currentColor">{weight:.2f}</text>'
        )
        parts.append(
            f'<text x="{x + bar_width / 2}" y="{height - 4}" font-size="10" text-anchor="middle" '
            f'fill="currentColor">e{i}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def answer_routing_html(weights: list[float]) -> str:
    """The routing block under an answer."""
    n = len(weights)
    return (
        f'<div class="parrot-routing" dir="ltr"><div class="parrot-routing-title">Routing of the image for this '
        f"prompt: softmax weights of the {n} experts (dashed: uniform 1/{n})</div>"
        f"{routing_chart(weights, 'routing weights')}</div>"
    )


def comparison_html(rows: dict[str, tuple[str, list[float]]], rtl: frozenset = frozenset()) -> str:
    """Charts side by side, one per language: `rows` = {language: (question, weights)}."""
    cells = []
    for lang, (question, weights) in rows.items():
        direction = "rtl" if lang in rtl else "auto"
        cells.append(
            f'<div class="parrot-compare-cell" data-language="{escape(lang)}">'
            f'<div class="parrot-compare-lang">{escape(lang)}</div>'
            f'<div class="parrot-compare-question" dir="{direction}">{escape(question)}</div>'
            f"{routing_chart(weights, lang, bar_width=20, gap=4)}</div>"
        )
    return f'<div class="parrot-compare">{"".join(cells)}</div>'


__all__ = ["answer_routing_html", "comparison_html", "routing_chart"]
