"""Delayed tasks: how late each starts after its runAt (idle system), against Celery's ETA.

The service's tasks wait in Postgres and the sweeper (at its default 1 s interval) releases
each when it falls due: it sleeps until the earliest due time and is woken by the NOTIFY of
a delayed submission. The baseline sends the same spread of raw Celery tasks with `eta`,
which a worker holds in memory and starts from its own timer (the way issue 14 rules out:
an ETA message lives only in Redis and the worker).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from bench import baseline_celery
from bench.load import Client
from bench.probes import Stamps
from bench.report import Report, at_most, percentile
from bench.stack import BASELINE_QUEUE, SERVICE_QUEUE, Stack

ECHO = {"taskDefinitionId": "echo", "input": {"message": "later"}}
#: The contract: on an idle system a delayed task starts at most 1 s after its runAt (p99).
P99_MAX_MS = 1000.0


@dataclass
class DelayedSettings:
    """How many delayed tasks, how far apart their due times, and the lead before the first."""

    tasks: int = 200
    gap: float = 0.05  # seconds between consecutive due times: each meets an idle system
    lead: float = 5.0  # seconds from the first submission to the first due time
    concurrency: int = 2


def _due_times(cfg: DelayedSettings) -> list[float]:
    first = time.time() + cfg.lead
    return [first + i * cfg.gap for i in range(cfg.tasks)]


def service_lateness(client: Client, stack: Stack, cfg: DelayedSettings) -> list[float]:
    """Submit every task with its runAt up front; return start_time - runAt of each (s)."""
    ids = []
    for due in _due_times(cfg):
        run_at = datetime.fromtimestamp(due, UTC).isoformat()
        status, doc = client.request("POST", "/api/v1/tasks", {**ECHO, "runAt": run_at})
        if status != 201:
            raise RuntimeError(f"submit answered {status}: {doc}")
        ids.append(doc["id"])
    deadline = time.monotonic() + cfg.lead + cfg.tasks * cfg.gap + 60
    with contextlib.closing(stack.connect()) as conn, conn.cursor() as cur:
        while True:
            # Both times come from the database's clock: no host clock takes part.
            cur.execute(
                "SELECT extract(epoch FROM start_time - run_at)::float FROM tasks"
                " WHERE id = ANY(%s::uuid[]) AND status = 'COMPLETED'",
                (ids,),
            )
            late = [row[0] for row in cur.fetchall()]
            if len(late) == len(ids):
                return late
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - len(late)} delayed task(s) never completed")
            time.sleep(0.2)


def celery_eta_lateness(stamps: Stamps, cfg: DelayedSettings) -> list[float]:
    """The same spread as raw Celery tasks with `eta`; return start - eta of each (s)."""
    keys = []
    for i, due in enumerate(_due_times(cfg)):
        key = f"eta-{i}"
        baseline_celery.app.send_task(
            "bench.stamp",
            args=[key],
            queue=BASELINE_QUEUE,
            eta=datetime.fromtimestamp(due, UTC),
        )
        keys.append((key, due))
    return [
        stamps.wait(key, timeout=cfg.lead + cfg.tasks * cfg.gap + 60)[0] - due for key, due in keys
    ]


def run(stack: Stack, report: Report, api_url: str, cfg: DelayedSettings) -> None:
    """Measure start lateness of delayed tasks, the raw-Celery ETA baseline first."""
    stack.reset()
    worker = stack.start_worker(
        "baseline-worker", "bench.baseline_celery", BASELINE_QUEUE, cfg.concurrency
    )
    try:
        eta = celery_eta_lateness(Stamps(stack), cfg)
    finally:
        stack.stop(worker)
    stack.reset()

    client = Client(api_url, {"X-API-Key": stack.api_key})
    sweeper = stack.start_sweeper()
    worker = stack.start_worker("worker", "workers.celery_app", SERVICE_QUEUE, cfg.concurrency)
    try:
        late = service_lateness(client, stack, cfg)
    finally:
        stack.stop(worker)
        stack.stop(sweeper)
        client.close()
        with contextlib.suppress(Exception):
            stack.reset()

    report.info(
        f"delayed tasks: {cfg.tasks}, due {cfg.gap * 1000:.0f} ms apart, submitted up front;"
        " sweeper at its default interval"
    )
    if min(late) < 0:
        raise AssertionError(f"a delayed task started {-min(late) * 1000:.1f} ms before runAt")
    for suffix, q in (("p50", 50), ("p99", 99)):
        report.figure(f"baseline.celery.eta_to_started.{suffix}", percentile(eta, q) * 1000, "ms")
    for suffix, q, bound in (("p50", 50, None), ("p99", 99, P99_MAX_MS)):
        value = percentile(late, q) * 1000
        report.figure(
            f"delayed.run_at_to_started.{suffix}",
            value,
            "ms",
            baselines=[("celery eta->started", percentile(eta, q) * 1000)],
            target=f"<= {bound:.0f} ms" if bound else "",
            met=at_most(value, bound) if bound else None,
        )
    report.figure("delayed.run_at_to_started.max", max(late) * 1000, "ms")
