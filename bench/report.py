"""Figures and their one-line form `name: value unit (ratio vs baseline)`, with targets."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, NaNs ignored; NaN if none."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Figure:
    """One measured number, the baselines it is compared with, and its target if any."""

    name: str
    value: float
    unit: str
    baselines: list[tuple[str, float]] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    note: str = ""

    def ratios(self) -> list[tuple[str, float]]:
        """(baseline label, value / baseline) for each known baseline."""
        return [(label, self.value / b) for label, b in self.baselines if b and not math.isnan(b)]

    def line(self) -> str:
        """The figure as `name: value unit (ratios) [target: verdict]`."""
        text = f"{self.name}: {_fmt(self.value)} {self.unit}"
        ratios = self.ratios()
        if ratios:
            text += " (" + "; ".join(f"{r:.2f}x {label}" for label, r in ratios) + ")"
        elif not self.baselines:
            text += " (baseline)" if self.name.startswith("baseline.") else ""
        if self.target:
            verdict = "n/a" if self.met is None else ("met" if self.met else "MISSED")
            text += f" [target {self.target}: {verdict}]"
        if self.note:
            text += f" -- {self.note}"
        return text


class Report:
    """Collects figures, prints each as soon as it is known, and saves them as JSON."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.figures: list[Figure] = []
        self.meta: dict[str, Any] = {}

    def add(self, figure: Figure) -> Figure:
        """Record a figure and print its line."""
        self.figures.append(figure)
        print(figure.line(), file=self.out, flush=True)
        return figure

    def figure(self, name: str, value: float, unit: str, **kw: Any) -> Figure:
        """Record and print a new figure."""
        return self.add(Figure(name, value, unit, **kw))

    def raw(self, line: str) -> None:
        """A figure line produced elsewhere (the listing script), kept verbatim."""
        self.meta.setdefault("raw", []).append(line)
        print(line, file=self.out, flush=True)

    def info(self, text: str) -> None:
        """Print a context line (starting with #)."""
        print(f"# {text}", file=self.out, flush=True)

    def get(self, name: str) -> float:
        """The value of a recorded figure, NaN if none."""
        for figure in self.figures:
            if figure.name == name:
                return figure.value
        return math.nan

    def save(self, path: Path) -> None:
        """Write the figures and the run's metadata as JSON."""
        doc = {"meta": self.meta, "figures": [asdict(f) for f in self.figures]}
        path.write_text(json.dumps(doc, indent=2, default=str))


def at_least(value: float, bound: float) -> bool | None:
    """Whether value >= bound; None when either is unknown."""
    return None if math.isnan(value) or math.isnan(bound) else value >= bound


def at_most(value: float, bound: float) -> bool | None:
    """Whether value <= bound; None when either is unknown."""
    return None if math.isnan(value) or math.isnan(bound) else value <= bound
