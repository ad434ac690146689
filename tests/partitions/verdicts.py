"""A partition scenario's verdict: the fault suite's, plus what the cut hosts answered."""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from tests.reliability.verdict import REPORT_ENV, Verdict

#: Summary lines of this session, printed again in pytest's terminal summary.
SUMMARIES: list[str] = []


@dataclass
class PartitionVerdict:
    """The fault suite's verdict of a scenario and the partition's own figures."""

    base: Verdict
    results: int  # COMPLETED attempts beyond one per task: must be 0
    refused: Counter[str] = field(default_factory=Counter)  # "host status" -> submits
    superseded: int = 0  # handlers that finished but whose result was refused (task moved on)
    rejoin: list[float] = field(default_factory=list)  # heal -> the cut worker host runs again
    slowest: float = 0.0  # the slowest answer to a submit during a cut, seconds
    #: An API host cut from Redis: seconds from the cut until its Redis breaker opened, and the
    #: slowest submit to it sent from then until the heal (None: no breaker opened).
    breaker_opened: float | None = None
    slowest_after_open: float | None = None
    #: Sessions whose transaction, open since before the last heal, Postgres still kept well
    #: after it (a cut client's session holding its locks): must be none.
    lingering: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.base.lost
            and not self.base.unexpected
            and self.results == 0
            and not self.lingering
        )

    def line(self) -> str:
        v = self.base
        probe = f"recovery max={max(v.probes):.1f}s" if v.probes else "recovery n/a"
        if self.rejoin:
            probe += f" rejoin max={max(self.rejoin):.1f}s"
        if self.breaker_opened is not None:
            probe += (
                f" breaker opened={self.breaker_opened:.1f}s"
                f" slowest after={self.slowest_after_open or 0:.2f}s"
            )
        refused = ", ".join(f"{k}: {n}" for k, n in sorted(self.refused.items())) or "none"
        notes = "".join(f" {k}={val}" for k, val in v.notes.items())
        return (
            f"partition {v.scenario}: tasks={v.tasks} faults={v.faults} "
            f"lost={len(v.lost)} unexpected={len(v.unexpected)} "
            f"duplicates={v.duplicated_tasks} (extra attempts {v.extra_attempts}) "
            f"results refused={self.superseded} two-results={self.results} "
            f"lingering={len(self.lingering)} "
            f"refused during cuts=[{refused}] slowest={self.slowest:.1f}s {probe} "
            f"drain={v.drain:.1f}s outcomes={dict(sorted(v.counts.items()))}{notes}"
        )

    def explain(self) -> str:
        shown = [
            *(f"lost: {t}" for t in self.base.lost[:10]),
            *self.base.unexpected[:20],
            *(f"lingering session: {s}" for s in self.lingering),
        ]
        return self.line() + "\n  " + "\n  ".join(shown)


def report(verdict: PartitionVerdict) -> None:
    """Print the one-line summary and append the figures to the report file, if asked."""
    line = verdict.line()
    print("\n" + line)
    SUMMARIES.append(line)
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    v = verdict.base
    doc = {
        "suite": "partitions",
        "scenario": v.scenario,
        "tasks": v.tasks,
        "faults": v.faults,
        "lost": len(v.lost),
        "unexpected": len(v.unexpected),
        "duplicated_tasks": v.duplicated_tasks,
        "extra_attempts": v.extra_attempts,
        "superseded": verdict.superseded,
        "two_results": verdict.results,
        "lingering": len(verdict.lingering),
        "refused": dict(verdict.refused),
        "slowest": round(verdict.slowest, 2),
        "breaker_opened": verdict.breaker_opened,
        "slowest_after_open": verdict.slowest_after_open,
        "probe_max": max(v.probes) if v.probes else None,
        "probe_median": statistics.median(v.probes) if v.probes else None,
        "rejoin_max": max(verdict.rejoin) if verdict.rejoin else None,
        "drain": round(v.drain, 2),
        "outcomes": v.counts,
        "notes": v.notes,
        "at": datetime.now().isoformat(timespec="seconds"),
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(doc, default=str) + "\n")
