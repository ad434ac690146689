"""Figure 4: listing latency over a million rows, measured by bench/list_tasks.py."""

from __future__ import annotations

import re
import subprocess
import sys

from bench.report import Report
from bench.stack import ROOT, Stack

SCRIPT = ROOT / "bench" / "list_tasks.py"
# What list_tasks.py prints per figure, e.g. "list status=FAILED: p50=3.10ms p99=5.20ms n=200 ..."
_LINE = re.compile(r"^list (?P<name>.+?): p50=(?P<p50>[\d.]+)ms p99=(?P<p99>[\d.]+)ms(?P<rest>.*)$")
BASELINE = "get-by-id"


def run(stack: Stack, report: Report, timeout: float, requests: int) -> None:
    """Run the listing benchmark (its own seeded database on our server); report its figures."""
    if not SCRIPT.exists():
        report.info("listing: bench/list_tasks.py is not present; skipped")
        return
    if timeout < 60:
        report.info(f"listing: only {timeout:.0f}s of the time budget left; skipped")
        return
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--requests", str(requests)],
            cwd=ROOT,
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        report.info(f"listing: bench/list_tasks.py did not finish in {timeout:.0f}s; skipped")
        return
    base: dict[str, float] = {}
    for line in done.stdout.splitlines():
        match = _LINE.match(line)
        if match is None:
            report.info(f"listing: {line.lstrip('# ')}")
            continue
        name = match["name"].replace(" ", "_")
        values = {"p50": float(match["p50"]), "p99": float(match["p99"])}
        note = match["rest"].split("[")[0].strip()
        if match["name"] == BASELINE:
            base = values
            for q, value in values.items():
                report.figure(f"baseline.get_task_by_id.{q}", value, "ms", note=note)
            continue
        for q, value in values.items():
            baselines = [("GET one task", base[q])] if q in base else []
            report.figure(f"listing.{name}.{q}", value, "ms", baselines=baselines, note=note)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-10:])
        report.info(f"listing: bench/list_tasks.py exited {done.returncode}:\n{tail}")
