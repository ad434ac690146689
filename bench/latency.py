"""Figure 3: pickup, completion, cancel and timeout latencies against Celery's own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import baseline_celery
from bench.load import Client
from bench.probes import POLL, Ledger, Stamps, until_free
from bench.report import Report, at_most, percentile
from bench.stack import BASELINE_QUEUE, SERVICE_QUEUE, Stack

ECHO = {"taskDefinitionId": "echo", "input": {"message": "hello"}}
SLEEP = {"taskDefinitionId": "sleep", "input": {"seconds": 30}}
TIMEOUT_MS = 200
WARMUP = 2  # first runs in a fresh pool child pay for lazy set-up (connections); not counted


@dataclass
class LatencySettings:
    """Repetitions per latency and the worker's concurrency for pickup."""

    repetitions: int = 50
    concurrency: int = 4
    gap: float = 0.05  # idle time between repetitions, so each one meets an idle system


def _submit(client: Client, body: dict[str, Any]) -> str:
    status, doc = client.request("POST", "/api/v1/tasks", body)
    if status != 201:
        raise RuntimeError(f"submit answered {status}: {doc}")
    return str(doc["id"])


def _repeat(n: int, gap: float, once: Callable[[int], tuple[float, ...]]) -> list[list[float]]:
    """Run `once` n times after WARMUP unrecorded runs; return its results column by column."""
    samples = []
    for i in range(-WARMUP, n):
        sample = once(i)
        if i >= 0:
            samples.append(sample)
        time.sleep(gap)
    return [list(column) for column in zip(*samples, strict=True)]


# ------------------------------------------------------------ the service


def service_pickup(client: Client, ledger: Ledger, cfg: LatencySettings) -> list[list[float]]:
    """submit -> RUNNING (claim time in Postgres) and submit -> COMPLETED visible."""

    def once(_: int) -> tuple[float, ...]:
        sent = time.time()
        tid = _submit(client, ECHO)
        row, seen = ledger.wait(tid, {"COMPLETED"})
        assert row.start is not None
        return row.start - sent, seen - sent

    return _repeat(cfg.repetitions, cfg.gap, once)


def service_cancel(
    client: Client, ledger: Ledger, cfg: LatencySettings, force: bool
) -> list[list[float]]:
    """Cancel a running sleep: (child gone, next queued task started) after the request."""

    def probe_start(probe: str) -> float | None:
        row = ledger.row(probe)
        return row.start if row.status != "PENDING" else None

    def once(_: int) -> tuple[float, ...]:
        sleeper = _submit(client, SLEEP)
        row, _ = ledger.wait(sleeper, {"RUNNING"})
        probe = _submit(client, ECHO)  # queued: the only slot is busy
        sent = time.time()
        status, doc = client.request(
            "POST", f"/api/v1/tasks/{sleeper}/cancel", {"reason": "bench", "force": force}
        )
        if status != 200:
            raise RuntimeError(f"cancel answered {status}: {doc}")
        return until_free(sent, row.pid if force else None, lambda: probe_start(probe))

    return _repeat(cfg.repetitions, cfg.gap, once)


def service_timeout(client: Client, ledger: Ledger, cfg: LatencySettings) -> list[float]:
    """An attempt with a 200 ms timeout: deadline (start + timeout) -> TIMED_OUT visible."""
    body = {
        "taskDefinitionId": "sleep",
        "input": {"seconds": 10},
        "executionConfig": {"timeout": TIMEOUT_MS, "retryPolicy": {"maxRetries": 0}},
    }

    def once(_: int) -> tuple[float, ...]:
        tid = _submit(client, body)
        row, seen = ledger.wait(tid, {"TIMED_OUT", "FAILED", "COMPLETED"})
        if row.status != "TIMED_OUT" or row.start is None:
            raise RuntimeError(f"timeout probe ended {row.status}")
        return (seen - (row.start + TIMEOUT_MS / 1000),)

    return _repeat(cfg.repetitions, cfg.gap, once)[0]


# ------------------------------------------------------------ raw Celery


def celery_pickup(stamps: Stamps, cfg: LatencySettings) -> list[list[float]]:
    """publish -> task started, publish -> task body ended."""

    def once(i: int) -> tuple[float, ...]:
        key = f"pickup-{i}"
        sent = time.time()
        baseline_celery.publish("bench.stamp", key)
        start, end, _ = stamps.wait(key, ended=True)
        return start - sent, end - sent

    return _repeat(cfg.repetitions, cfg.gap, once)


def celery_revoke(stamps: Stamps, cfg: LatencySettings) -> list[list[float]]:
    """revoke(terminate=True, SIGKILL) of a running task: (child gone, next task started)."""
    app = baseline_celery.app

    def once(i: int) -> tuple[float, ...]:
        sleeper = baseline_celery.publish("bench.stamp", f"sleep-{i}", 30.0)
        _, _, pid = stamps.wait(f"sleep-{i}")
        baseline_celery.publish("bench.stamp", f"probe-{i}")
        sent = time.time()
        app.control.revoke(sleeper, terminate=True, signal="SIGKILL")

        def probe_start() -> float | None:
            stamp = stamps.get(f"probe-{i}")
            return stamp[0] if stamp else None

        return until_free(sent, pid, probe_start)

    return _repeat(cfg.repetitions, cfg.gap, once)


def celery_soft_timeout(stamps: Stamps, cfg: LatencySettings) -> list[float]:
    """A task with a 200 ms soft time limit: limit -> the task body has ended."""

    def once(i: int) -> tuple[float, ...]:
        key = f"limit-{i}"
        baseline_celery.app.send_task(
            "bench.stamp",
            args=[key, 10.0],
            queue=BASELINE_QUEUE,
            soft_time_limit=TIMEOUT_MS / 1000,
            time_limit=TIMEOUT_MS / 1000 + 5,
        )
        start, end, _ = stamps.wait(key, ended=True)
        return (end - (start + TIMEOUT_MS / 1000),)

    return _repeat(cfg.repetitions, cfg.gap, once)[0]


# ------------------------------------------------------------ the figure


def run(stack: Stack, report: Report, api_url: str, cfg: LatencySettings) -> None:
    """Measure each latency on an idle system, the raw-Celery ones first."""
    stamps = Stamps(stack)
    stack.reset()
    worker = stack.start_worker(
        "baseline-worker", "bench.baseline_celery", BASELINE_QUEUE, cfg.concurrency
    )
    try:
        raw_pickup, raw_done = celery_pickup(stamps, cfg)
    finally:
        stack.stop(worker)
    worker = stack.start_worker("baseline-worker-1", "bench.baseline_celery", BASELINE_QUEUE, 1)
    try:
        raw_gone, raw_free = celery_revoke(stamps, cfg)
        soft = celery_soft_timeout(stamps, cfg)
    finally:
        stack.stop(worker)
    stack.reset()

    client = Client(api_url, {"X-API-Key": stack.api_key})
    ledger = Ledger(stack)
    sweeper = stack.start_sweeper()
    try:
        worker = stack.start_worker("worker", "workers.celery_app", SERVICE_QUEUE, cfg.concurrency)
        try:
            pickup, done = service_pickup(client, ledger, cfg)
        finally:
            stack.stop(worker)
        worker = stack.start_worker("worker-1", "workers.celery_app", SERVICE_QUEUE, 1)
        try:
            force_gone, force_free = service_cancel(client, ledger, cfg, force=True)
            _, graceful_free = service_cancel(client, ledger, cfg, force=False)
            timeout = service_timeout(client, ledger, cfg)
        finally:
            stack.stop(worker)
    finally:
        stack.stop(sweeper)
        ledger.conn.close()
        client.close()
        with contextlib.suppress(Exception):
            stack.reset()

    report.info(f"latencies: {cfg.repetitions} repetitions each, {POLL * 1000:.0f} ms polling")
    for name, values in (
        ("celery.publish_to_started", raw_pickup),
        ("celery.publish_to_finished", raw_done),
        ("celery.revoke_terminate_to_child_gone", raw_gone),
        ("celery.revoke_terminate_to_slot_free", raw_free),
        ("celery.soft_time_limit_to_ended", soft),
    ):
        for suffix, q in (("p50", 50), ("p99", 99)):
            report.figure(f"baseline.{name}.{suffix}", percentile(values, q) * 1000, "ms")
    revoke = "celery revoke->slot free"
    _pair(report, "latency.pickup", pickup, raw_pickup, "celery publish->started", p50_max=20)
    _pair(report, "latency.completed", done, raw_done, "celery publish->finished")
    _pair(report, "latency.force_cancel_to_child_gone", force_gone, raw_gone, "celery revoke->gone")
    _pair(report, "latency.force_cancel_to_slot_free", force_free, raw_free, revoke, p99_max=250)
    _pair(report, "latency.graceful_cancel_to_slot_free", graceful_free, raw_free, revoke)
    _pair(
        report,
        "latency.timeout_to_timed_out",
        timeout,
        soft,
        "celery soft limit->ended",
        p99_max=250,
    )


def _pair(
    report: Report,
    name: str,
    values: list[float],
    base: list[float],
    label: str,
    p50_max: float | None = None,
    p99_max: float | None = None,
) -> None:
    for suffix, q, bound in (("p50", 50, p50_max), ("p99", 99, p99_max)):
        value = percentile(values, q) * 1000
        report.figure(
            f"{name}.{suffix}",
            value,
            "ms",
            baselines=[(label, percentile(base, q) * 1000)],
            target=f"<= {bound:.0f} ms" if bound else "",
            met=at_most(value, bound) if bound else None,
        )
