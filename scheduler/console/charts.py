"""Charts drawn on the server as SVG: no script, nothing loaded, same look offline.

Pure functions of their data; every label is escaped here (call result statuses come from Plum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Callable

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 30
MAX_BUCKETS = 120


@dataclass(frozen=True)
class RatePoint:
    at: datetime  # start of the bucket
    per_second: float


def rate_series(counts: list[tuple[datetime, int]], max_buckets: int = MAX_BUCKETS) -> tuple[list[RatePoint], int]:
    """Requests per second over time from per-second counts: at most ``max_buckets`` buckets of
    whole seconds (empty seconds included), each the mean rate in it. Returns the bucket size."""
    if not counts:
        return [], 1
    first, last = counts[0][0], counts[-1][0]
    span = int((last - first).total_seconds()) + 1
    size = max(1, math.ceil(span / max_buckets))
    totals = [0] * math.ceil(span / size)
    for at, count in counts:
        totals[int((at - first).total_seconds()) // size] += count
    return [RatePoint(first + timedelta(seconds=i * size), total / size) for i, total in enumerate(totals)], size


def _nice_ceiling(value: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at least ``value`` (a round top for the y axis)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def rate_chart(points: list[RatePoint], limit: float, bucket_seconds: int) -> Markup:
    """Requests per second as a line, the account's limit as a dashed line."""
    top = _nice_ceiling(max([limit * 1.15] + [p.per_second for p in points]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [_svg_open("requests per second over time, with the limit")]
    parts += _y_axis(top, y)
    limit_y = y(limit)
    parts.append(f'<line class="limit" x1="{LEFT}" y1="{limit_y:.1f}" x2="{WIDTH - RIGHT}" y2="{limit_y:.1f}" '
                 f'stroke="#c0392b" stroke-dasharray="6 4" stroke-width="1.5"/>')
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{limit_y - 4:.1f}" text-anchor="end" fill="#c0392b" '
                 f'font-size="11">limit {limit:g}/s</text>')
    if points:
        step = plot_w / max(1, len(points) - 1)
        coords = " ".join(f"{LEFT + i * step:.1f},{y(p.per_second):.1f}" for i, p in enumerate(points))
        parts.append(f'<polyline class="rate" points="{coords}" fill="none" stroke="#1f6feb" stroke-width="2"/>')
        for x, label in ((LEFT, points[0].at), (WIDTH - RIGHT, points[-1].at)):
            anchor = "start" if x == LEFT else "end"
            parts.append(f'<text x="{x}" y="{HEIGHT - 10}" text-anchor="{anchor}" font-size="11">'
                         f'{label:%H:%M:%S} UTC</text>')
        parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 10}" text-anchor="middle" font-size="11">'
                     f'mean per {bucket_seconds} s</text>')
    else:
        parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
                     'font-size="13">no request yet</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _y_axis(top: float, y: Callable[[float], float]) -> list[str]:
    parts = []
    for i in range(5):
        value = top * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y(value):.1f}" x2="{WIDTH - RIGHT}" y2="{y(value):.1f}" '
                     'stroke="#ddd" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">{value:g}</text>')
    return parts


def bar_chart(counts: dict[str, int], title: str) -> Markup:
    """One horizontal bar per key, longest first, each labelled with its key and count."""
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    bar_h, gap, label_w = 18, 6, 170
    height = max(1, len(rows)) * (bar_h + gap) + gap
    top = max([count for _, count in rows] + [1])
    parts = [_svg_open(title, height)]
    for i, (key, count) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        width = (WIDTH - label_w - 70) * count / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">{escape(str(key))}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{bar_h}" fill="#1f6feb"/>')
        parts.append(f'<text x="{label_w + width + 6:.1f}" y="{y + 13}" font-size="12">{count:,}</text>')
    if not rows:
        parts.append(f'<text x="{WIDTH / 2:.0f}" y="16" text-anchor="middle" font-size="13">none yet</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _svg_open(title: str, height: int = HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {height}" '
            f'width="{WIDTH}" height="{height}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>')
