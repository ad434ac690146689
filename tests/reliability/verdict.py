"""The verdict of a scenario: each task judged against what the test did, and the figures."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.reliability.ledger import Fault, Tracked

#: Where one JSON line per scenario is appended (docs/guarantees.md quotes these figures).
REPORT_ENV = "TASKEXEC_RELIABILITY_REPORT"
#: Summary lines of this session, printed again in pytest's terminal summary.
SUMMARIES: list[str] = []


@dataclass
class Verdict:
    """The outcome of a scenario: lost and unexpected must be empty."""

    scenario: str
    tasks: int
    faults: int
    lost: list[str]
    unexpected: list[str]
    duplicated_tasks: int
    extra_attempts: int
    refused: int
    recovery: list[float]  # per fault that hit an attempt: until that attempt was closed
    probes: list[float]  # per outage: from the server's return to a fresh task's completion
    drain: float
    counts: dict[str, int]
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        rec = (
            f"recovery max={max(self.recovery):.1f}s median={statistics.median(self.recovery):.1f}s"
            if self.recovery
            else "recovery n/a"
        )
        if self.probes:
            rec += f" probe max={max(self.probes):.1f}s"
        extra = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"reliability {self.scenario}: tasks={self.tasks} faults={self.faults} "
            f"lost={len(self.lost)} unexpected={len(self.unexpected)} "
            f"duplicates={self.duplicated_tasks} (extra attempts {self.extra_attempts}) "
            f"refused={self.refused} hit={len(self.recovery)} {rec} drain={self.drain:.1f}s "
            f"outcomes={dict(sorted(self.counts.items()))}{extra}"
        )

    def explain(self) -> str:
        shown = [*(f"lost: {t}" for t in self.lost[:10]), *self.unexpected[:20]]
        return self.line() + "\n  " + "\n  ".join(shown)


def judge_task(
    tracked: Tracked,
    row: dict[str, Any],
    history: list[dict[str, Any]],
    faults: list[Fault],
    max_worker_lost: int,
) -> list[str]:
    """Return what contradicts the test's own history for one task."""
    problems: list[str] = []
    status = row["status"]
    kind = (row["error"] or {}).get("kind")
    if row["attempts"] != len(history):
        problems.append(f"attempts={row['attempts']} but {len(history)} attempt rows")
    completed = [a for a in history if a["status"] == "COMPLETED"]
    if len(completed) > 1:
        problems.append(f"{len(completed)} attempts COMPLETED")
    if status == "COMPLETED" and (not completed or completed[-1] is not history[-1]):
        problems.append("COMPLETED, but not by its last attempt")
    if status != "COMPLETED" and completed:
        problems.append(f"{status}, yet attempt {completed[0]['attempt']} COMPLETED")
    if any(a["ended_at"] is None for a in history):
        problems.append("an attempt row was left open")
    # Every attempt that did not finish the task must have met a fault.
    poison = tracked.definition == "poison"
    for attempt in history:
        ended_task = attempt is history[-1] and attempt["status"] == status
        if ended_task and status != "FAILED":
            continue
        if not poison and not any(f.touches(attempt) for f in faults):
            problems.append(
                f"attempt {attempt['attempt']} ended {attempt['status']} with no fault near it"
            )
    # The terminal status must agree with what the test did.
    cancels = tracked.cancels
    if 200 in cancels and status != "CANCELLED":
        problems.append(f"cancel answered 200 but the task ended {status}")
    if status == "CANCELLED" and not cancels:
        problems.append("CANCELLED but never cancelled")
    if status == "CANCELLED" and cancels and set(cancels) == {409}:
        problems.append("CANCELLED although every cancel answered 409")
    if status == "COMPLETED":
        problems += _check_output(tracked, row["output"])
    if status == "TIMED_OUT":
        problems.append(f"TIMED_OUT: {row['error']}")
    if status == "FAILED":
        policy_attempts = int(row["retry_policy"].get("maxRetries", 0)) + 1
        # Count losses in the attempt history: the ground truth, whichever path wrote it.
        losses = sum((a["error"] or {}).get("kind") == "WORKER_LOST" for a in history)
        capped = losses >= max_worker_lost or len(history) >= policy_attempts
        if kind != "WORKER_LOST":
            problems.append(f"FAILED {kind}: {row['error']}")
        elif not capped:
            problems.append(f"FAILED WORKER_LOST after {losses} losses (cap not reached)")
    if poison:
        if status != "FAILED" or kind != "WORKER_LOST":
            problems.append(f"the poison task ended {status} {kind}")
        if row["attempts"] > max_worker_lost:
            problems.append(f"the poison task ran {row['attempts']} times (cap exceeded)")
    return problems


def report(verdict: Verdict) -> None:
    """Print the one-line summary and append the figures to the report file, if asked."""
    line = verdict.line()
    print("\n" + line)
    SUMMARIES.append(line)
    path = os.environ.get(REPORT_ENV)
    if path:
        doc = {
            "scenario": verdict.scenario,
            "tasks": verdict.tasks,
            "faults": verdict.faults,
            "lost": len(verdict.lost),
            "unexpected": len(verdict.unexpected),
            "duplicated_tasks": verdict.duplicated_tasks,
            "extra_attempts": verdict.extra_attempts,
            "refused": verdict.refused,
            "recovery_max": max(verdict.recovery) if verdict.recovery else None,
            "recovery_median": statistics.median(verdict.recovery) if verdict.recovery else None,
            "hit": len(verdict.recovery),
            "probe_max": max(verdict.probes) if verdict.probes else None,
            "drain": round(verdict.drain, 2),
            "outcomes": verdict.counts,
            "notes": verdict.notes,
            "at": datetime.now().isoformat(timespec="seconds"),
        }
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(doc, default=str) + "\n")


def outcome(row: dict[str, Any]) -> str:
    """Name a final state, with the error kind of a failure."""
    kind = (row["error"] or {}).get("kind")
    return f"{row['status']}/{kind}" if kind and row["status"] == "FAILED" else row["status"]


def _check_output(tracked: Tracked, output: Any) -> list[str]:
    if tracked.definition == "echo" and output != tracked.input:
        return [f"echo returned {output!r} for {tracked.input!r}"]
    if tracked.definition == "sleep" and not (
        isinstance(output, dict) and output.get("slept", -1) >= 0
    ):
        return [f"sleep returned {output!r}"]
    return []
