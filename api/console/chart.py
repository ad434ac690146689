"""The geometry of the queues page's chart: stacked bars of tasks finished per minute, as SVG.

Drawn on the server (no chart library): the template turns these numbers into <rect> and
<text> elements, so the chart needs no script and Jinja escapes every label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.store import MinuteCount
from shared.task_document import rfc3339

WIDTH = 960
HEIGHT = 260
LEFT = 44  # room for the y-axis labels
RIGHT = 8
TOP = 12
BOTTOM = 28  # room for the time labels
#: A time label every this many minutes.
LABEL_EVERY = 10


@dataclass(frozen=True)
class Bar:
    """One minute: a completed segment on the axis and a failed one stacked on it."""

    x: float
    width: float
    completed_y: float
    completed_height: float
    failed_y: float
    failed_height: float
    minute: str  # RFC 3339
    completed: int
    failed: int


@dataclass(frozen=True)
class Tick:
    """A label on an axis: its position and text (a count, or a time in RFC 3339)."""

    position: float
    text: str


@dataclass(frozen=True)
class Chart:
    """Everything the template draws."""

    width: int
    height: int
    left: int
    baseline: float
    right: float
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    total_completed: int
    total_failed: int


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above `value` (at least 1): a round axis top."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def build(minutes: list[MinuteCount]) -> Chart:
    """Lay out one bar per minute, scaled to the busiest minute rounded up."""
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = float(TOP + plot_height)
    top = nice_ceiling(max((m.completed + m.failed for m in minutes), default=0))
    slot = plot_width / max(len(minutes), 1)
    gap = min(2.0, slot * 0.2)
    bars = []
    x_ticks = []
    for index, m in enumerate(minutes):
        x = LEFT + index * slot
        completed_h = plot_height * m.completed / top
        failed_h = plot_height * m.failed / top
        minute = rfc3339(m.minute) or ""
        bars.append(
            Bar(
                x=round(x + gap / 2, 2),
                width=round(slot - gap, 2),
                completed_y=round(baseline - completed_h, 2),
                completed_height=round(completed_h, 2),
                failed_y=round(baseline - completed_h - failed_h, 2),
                failed_height=round(failed_h, 2),
                minute=minute,
                completed=m.completed,
                failed=m.failed,
            )
        )
        if (len(minutes) - 1 - index) % LABEL_EVERY == 0:
            x_ticks.append(Tick(round(x + slot / 2, 2), minute))
    # Whole numbers only: top is 1, 2 or 5 x 10^n, so steps of top/5 (or 1) are integers.
    step = top // 5 if top >= 5 else 1
    y_ticks = [
        Tick(round(baseline - plot_height * count / top, 2), str(count))
        for count in range(0, top + 1, step)
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        baseline=baseline,
        right=float(WIDTH - RIGHT),
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        total_completed=sum(m.completed for m in minutes),
        total_failed=sum(m.failed for m in minutes),
    )
