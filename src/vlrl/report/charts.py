"""Line charts as inline SVG, drawn here so that the report needs no script library or network.

A chart is a `<figure>`: a title, the SVG (axes with round ticks, one polyline per series, a dot
with a hover tooltip per point when there are few), and a legend with each series' last value.
Gaps (None: a NaN the trainer logged, or a step without the metric) break the line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

WIDTH, HEIGHT = 400, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 10, 26  # plot margins in px: room for tick labels
MAX_DOTS = 120  # above this many points per series, dots would hide the line
# Colour-blind-safe palette (Okabe-Ito), cycled.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

Series = list[tuple[float, float | None]]  # (step, value) pairs, ordered by step


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 x 10^k) spanning [lo, hi].

    >>> nice_ticks(0.03, 0.97)
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    >>> nice_ticks(10, 10)
    [9.0, 9.5, 10.0, 10.5, 11.0]
    """
    if hi <= lo:  # a flat line: open a small range around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]  # 0.6, not 0.6000000000000001


def fmt(value: float) -> str:
    """A short label: 4 significant digits, no trailing zeros ('0.25', '1.2e+04', '3')."""
    return f"{value:.4g}"


def tick_labels(ticks: list[float]) -> list[str]:
    """Labels with just the decimals that tell the ticks apart (fixed point, or %g for tiny steps).

    >>> tick_labels([5.9882, 5.9884, 5.9886])
    ['5.9882', '5.9884', '5.9886']
    >>> tick_labels([0.0, 50.0, 100.0])
    ['0', '50', '100']
    >>> tick_labels([9.5e-06, 1e-05, 1.05e-05])
    ['9.5e-06', '1e-05', '1.05e-05']
    """
    step = ticks[1] - ticks[0]
    largest = max(abs(t) for t in ticks)
    if step < 1e-4 or largest >= 1e6:
        digits = math.floor(math.log10(largest)) - math.floor(math.log10(step)) + 1
        return [f"{t:.{digits}g}" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [f"{t:.{decimals}f}" for t in ticks]


def _segments(points: Series) -> list[list[tuple[float, float]]]:
    """The runs of consecutive finite points; a None ends a run."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y):
            runs.append([])
        else:
            runs[-1].append((x, y))
    return [r for r in runs if r]


def _axes(xs: list[float], ys: list[float]) -> tuple[str, Callable[[float], float], Callable[[float], float]]:
    """Grid lines and tick labels, and the two functions mapping data to pixel coordinates."""
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)

    def py(y: float) -> float:
        return HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)

    parts = []
    for y, label in zip(y_ticks, tick_labels(y_ticks), strict=True):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
        )
        parts.append(
            f'<text class="tick" x="{LEFT - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for x, label in zip(x_ticks, tick_labels(x_ticks), strict=True):
        parts.append(
            f'<line class="grid" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
        )
        parts.append(
            f'<text class="tick" x="{px(x):.1f}" y="{HEIGHT - 8}" text-anchor="middle">{label}</text>'
        )
    return "".join(parts), px, py


def line_chart(title: str, series: dict[str, Series]) -> str:
    """A `<figure>` plotting each named series against the step; names and title are escaped."""
    finite = [(x, y) for pts in series.values() for run in _segments(pts) for x, y in run]
    head = f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
    if not finite:
        return head + '<p class="empty">no finite values</p></figure>'
    grid, px, py = _axes([x for x, _ in finite], [y for _, y in finite])
    lines, legend = [], []
    for i, (name, points) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        runs = _segments(points)
        for run in runs:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}"/>')
        dots = [p for run in runs for p in run]
        if len(dots) <= MAX_DOTS:
            lines.extend(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.2" fill="{colour}">'
                f"<title>{escape(name)} step {fmt(x)}: {fmt(y)}</title></circle>"
                for x, y in dots
            )
        last = fmt(dots[-1][1]) if dots else "-"
        legend.append(f'<span><i style="background:{colour}"></i>{escape(name)} <b>{last}</b></span>')
    svg = (
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"'
        f' aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">{grid}{"".join(lines)}</svg>'
    )
    return f'{head}{svg}<div class="legend">{"".join(legend)}</div></figure>'
