"""The queues a user would pick instead (../shared/peers/), measured in the same sitting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.report import Report, at_least, at_most

#: The peers' scripts, beside the checkout (reference material, not the project's code).
SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "run_peers.py"
#: Their own virtualenv (their README): Celery's defaults there are not the service's.
PYTHON = Path(os.environ.get("TASKEXEC_PEERS_PYTHON", "~/.peers-venv/bin/python")).expanduser()
#: Worker CPU per task the issue asks of the service (ms).
WORKER_CPU_TARGET_MS = 1.5


def run(out_dir: Path, tasks: int, systems: str = "celery,huey", rounds: int = 1) -> Path:
    """Run the peers' end-to-end phase with a Postgres update per job; the results file."""
    if not PYTHON.exists() or not SCRIPT.exists():
        raise FileNotFoundError(
            f"the peers need {SCRIPT} and their virtualenv {PYTHON} (see their README)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(PYTHON),
        str(SCRIPT),
        "--systems",
        systems,
        "--phases",
        "e2e_pg",
        "--rounds",
        str(rounds),
        "--n",
        str(tasks),
        "--out",
        str(out_dir),
    ]
    subprocess.run(command, check=True, stdout=sys.stderr, cwd=SCRIPT.parent)
    return max(out_dir.glob("results-*.jsonl"), key=lambda p: p.stat().st_mtime)


def summaries(path: Path) -> tuple[dict[tuple[str, str], float], dict[str, Any]]:
    """The peers' medians by (system, figure), and the run's header."""
    medians: dict[tuple[str, str], float] = {}
    header: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "header":
            header = record
        elif record.get("kind") == "summary" and record.get("median") is not None:
            medians[(record["system"], record["figure"])] = float(record["median"])
    return medians, header


def compare(report: Report, path: Path) -> None:
    """Set the service's bulk end-to-end figures beside the peers' from `path`."""
    medians, header = summaries(path)
    report.info(
        f"peers: {path.name}, {header.get('args', {}).get('n')} jobs per run,"
        f" load average at their start {header.get('loadavg')}"
    )
    for system in ("celery", "huey"):
        for figure, unit in (("e2e_pg_jobs_per_s", "jobs/s"), ("worker_cpu_ms_per_job_pg", "ms")):
            value = medians.get((system, figure), math.nan)
            if not math.isnan(value):
                report.figure(f"baseline.peers.{system}.{figure}", value, unit)
    celery = medians.get(("celery", "e2e_pg_jobs_per_s"), math.nan)
    huey = medians.get(("huey", "e2e_pg_jobs_per_s"), math.nan)
    bulk = report.get("e2e.bulk.tasks_per_s")
    report.figure(
        "e2e.bulk.vs_peers.tasks_per_s",
        bulk,
        "tasks/s",
        baselines=[("celery defaults+pg", celery), ("huey+pg", huey)],
        target=">= 1.0x celery defaults+pg",
        met=at_least(bulk, celery),
    )
    cpu = report.get("e2e.bulk.worker_cpu_per_task")
    report.figure(
        "e2e.bulk.vs_peers.worker_cpu_per_task",
        cpu,
        "ms",
        baselines=[
            ("celery defaults+pg", medians.get(("celery", "worker_cpu_ms_per_job_pg"), math.nan)),
            ("huey+pg", medians.get(("huey", "worker_cpu_ms_per_job_pg"), math.nan)),
        ],
        target=f"<= {WORKER_CPU_TARGET_MS} ms",
        met=at_most(cpu, WORKER_CPU_TARGET_MS),
    )
