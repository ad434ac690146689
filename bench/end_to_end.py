"""Figure 2: end-to-end throughput, N no-op tasks until all are done, against raw Celery."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2

from bench import baseline_celery
from bench.load import Client, FanOut
from bench.report import Report, at_least
from bench.stack import BASELINE_QUEUE, SERVICE_QUEUE, Proc, Stack, children, queue_keys
from bench.usage import Memory, cpu_seconds

ECHO = {"taskDefinitionId": "echo", "input": {"message": "hello", "n": 1}}
COMPLETED_TASKS = "SELECT count(*) FROM tasks WHERE status = 'COMPLETED'"
COMPLETED_BASELINE = "SELECT count(*) FROM bench_tasks WHERE status = 'COMPLETED'"


@dataclass
class EndToEndSettings:
    """How many tasks, producers and turns; the workers' concurrency."""

    tasks: int = 1000
    clients: int = 4
    batch: int = 100
    concurrency: int = 4
    timeout: float = 60.0  # per variant and round
    rounds: int = 2  # variants take turns, so drifting machine load hits each alike


# ------------------------------------------------------------ producers (run in forked processes)


def single_submits(url: str, key: str, count: int) -> Callable[[], int]:
    """POST /api/v1/tasks `count` times on one keep-alive connection."""
    client = Client(url, {"X-API-Key": key})
    client.request("GET", "/healthz")

    def run() -> int:
        for _ in range(count):
            status, body = client.request("POST", "/api/v1/tasks", ECHO)
            if status != 201:
                raise RuntimeError(f"submit answered {status}: {body}")
        return count

    return run


def bulk_submits(url: str, key: str, count: int, batch: int) -> Callable[[], int]:
    """POST /api/v1/tasks/bulk with `batch` tasks per request until `count` are in."""
    client = Client(url, {"X-API-Key": key})
    client.request("GET", "/healthz")

    def run() -> int:
        left = count
        while left > 0:
            n = min(batch, left)
            status, body = client.request("POST", "/api/v1/tasks/bulk", {"tasks": [ECHO] * n})
            if status != 201 or any("error" in item for item in body["items"]):
                raise RuntimeError(f"bulk submit answered {status}: {str(body)[:300]}")
            left -= n
        return count

    return run


def raw_publishes(
    database_url: str, count: int, with_pg: bool, defaults: bool = False
) -> Callable[[], int]:
    """Publish raw Celery tasks; with `with_pg`, INSERT each task's row first.

    `defaults`: to the Celery-with-its-defaults worker (one UPDATE per task).
    """
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    app = baseline_celery.defaults_app if defaults else baseline_celery.app
    name = "bench.defaults_pg" if defaults else "bench.pg_noop" if with_pg else "bench.noop"
    with app.producer_or_acquire():
        pass  # connect before the clock starts, as the HTTP clients do

    def run() -> int:
        with conn.cursor() as cur:
            for _ in range(count):
                task_id = str(uuid.uuid4())
                if with_pg:
                    cur.execute(
                        "INSERT INTO bench_tasks (id, status, input) VALUES (%s, 'PENDING', %s)",
                        (task_id, '{"message": "hello", "n": 1}'),
                    )
                app.send_task(name, args=[task_id], task_id=task_id)
        return count

    return run


# ------------------------------------------------------------ completion probes


def rows_done(stack: Stack, sql: str) -> Callable[[], int]:
    """A counter of finished rows, on one connection kept for the whole measurement."""
    conn = stack.connect()

    def count() -> int:
        with conn.cursor() as cur:
            cur.execute(sql)
            return int(cur.fetchone()[0])  # type: ignore[index]

    return count


def queue_drained(stack: Stack, queue: str) -> Callable[[], bool]:
    """True once no message is queued or unacknowledged (acks late: unacked until done)."""
    r = stack.redis()
    keys = queue_keys(queue)

    def drained() -> bool:
        pipe = r.pipeline()
        for key in keys:
            pipe.llen(key)
        pipe.hlen("unacked")
        return sum(pipe.execute()) == 0

    return drained


def measure(
    target: Any,
    args: list[tuple[Any, ...]],
    done: Callable[[bool], int],
    n: int,
    timeout: float,
) -> tuple[float, float, int]:
    """Run producers until `done(all_published)` reaches `n` or `timeout` passes.

    Returns (seconds, seconds until every producer returned, tasks done).
    """
    fan = FanOut(target, args)
    published: list[float] = []
    error: list[BaseException] = []

    def collect() -> None:
        try:
            fan.collect(timeout + 60)
            published.append(time.time())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            error.append(exc)

    started = fan.start()
    waiter = threading.Thread(target=collect, daemon=True)
    waiter.start()
    deadline = time.monotonic() + timeout
    while (count := done(bool(published))) < n and time.monotonic() < deadline:
        if error:
            raise RuntimeError(f"producers failed: {error[0]}")
        time.sleep(0.02)
    elapsed = time.time() - started
    waiter.join(timeout + 60)
    return elapsed, (published[0] - started) if published else math.nan, count


# ------------------------------------------------------------ the figure


def run(
    stack: Stack, report: Report, api: Proc, api_url: str, cfg: EndToEndSettings, memory: Memory
) -> None:
    """Measure the four variants in turns, both workers (same settings) running throughout."""
    rounds = max(cfg.rounds, 1)
    n, p = cfg.tasks // rounds, cfg.clients
    split = [n // p + (i < n % p) for i in range(p)]
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    cpu: dict[str, float] = {}  # "<variant>.<process>" -> CPU seconds

    def timed(name: str, target: Any, args: Any, done: Any, pids: dict[str, int]) -> None:
        before = {k: cpu_seconds(pid) for k, pid in pids.items()}
        took, submitted, count = measure(target, args, done, n, cfg.timeout)
        for k, pid in pids.items():
            cpu[f"{name}.{k}"] = cpu.get(f"{name}.{k}", 0.0) + cpu_seconds(pid) - before[k]
        seconds[name] = seconds.get(name, 0.0) + took
        counts[name] = counts.get(name, 0) + count
        partial = "" if count >= n else f" -- PARTIAL: stopped at {cfg.timeout:.0f}s"
        report.info(
            f"{name}: {count} of {n} tasks done in {took:.2f}s"
            f" (all submitted at {submitted:.2f}s){partial}"
        )

    stack.reset()
    raw = stack.start_worker(
        "baseline-worker", "bench.baseline_celery", BASELINE_QUEUE, cfg.concurrency
    )
    defaults = _start_defaults_worker(stack, cfg.concurrency)
    worker = stack.start_worker("worker", "workers.celery_app", SERVICE_QUEUE, cfg.concurrency)
    sweeper = stack.start_sweeper()
    ours = {"worker": worker.pid, "api": api.pid}
    try:
        drained = queue_drained(stack, BASELINE_QUEUE)
        rows = rows_done(stack, COMPLETED_BASELINE)
        completed = rows_done(stack, COMPLETED_TASKS)
        for _ in range(rounds):
            stack.reset()
            args: list[tuple[Any, ...]] = [(stack.database_url, c, False) for c in split]
            all_done = lambda pub: n if pub and drained() else 0  # noqa: E731
            timed("raw-noop", raw_publishes, args, all_done, {"worker": raw.pid})
            stack.reset()
            args = [(stack.database_url, c, True) for c in split]
            timed("raw-pg", raw_publishes, args, lambda _: rows(), {"worker": raw.pid})
            stack.reset()
            args = [(stack.database_url, c, True, True) for c in split]
            done = {"worker": defaults.pid}
            timed("celery-defaults-pg", raw_publishes, args, lambda _: rows(), done)
            stack.reset()
            args = [(api_url, stack.api_key, c) for c in split]
            timed("single", single_submits, args, lambda _: completed(), ours)
            _check_statuses(stack, report)
            stack.reset()
            args = [(api_url, stack.api_key, c, cfg.batch) for c in split]
            timed("bulk", bulk_submits, args, lambda _: completed(), ours)
            _check_statuses(stack, report)
        memory.child("raw Celery pool child", raw.pid)
        memory.child("service worker pool child", worker.pid)
    finally:
        stack.stop(sweeper)
        stack.stop(worker)
        stack.stop(raw)
        stack.stop(defaults)
        stack.reset()
    rates = {k: counts[k] / seconds[k] if counts[k] else math.nan for k in counts}
    cpu = {k: v * 1000 / counts[k.split(".")[0]] for k, v in cpu.items() if counts[k.split(".")[0]]}
    n = n * rounds

    report.info(
        f"end-to-end: {n} echo tasks per variant in {rounds} turns, {p} producers,"
        f" worker --concurrency {cfg.concurrency}"
    )
    for name in ("raw-noop", "raw-pg", "celery-defaults-pg"):
        label = name.replace("raw-", "raw-celery-")
        report.figure(f"baseline.{label}.tasks_per_s", rates[name], "tasks/s")
        report.figure(f"baseline.{label}.worker_cpu_per_task", cpu[f"{name}.worker"], "ms")
    report.figure(
        "e2e.single.tasks_per_s",
        rates["single"],
        "tasks/s",
        baselines=[("raw celery+pg", rates["raw-pg"]), ("raw celery noop", rates["raw-noop"])],
        target=">= 0.8x raw celery+pg",
        met=at_least(rates["single"], 0.8 * rates["raw-pg"]),
    )
    report.figure(
        "e2e.bulk.tasks_per_s",
        rates["bulk"],
        "tasks/s",
        baselines=[
            ("raw celery noop", rates["raw-noop"]),
            ("raw celery+pg", rates["raw-pg"]),
            ("celery defaults+pg", rates["celery-defaults-pg"]),
        ],
        target=">= 1.0x raw celery noop and >= 1.0x celery defaults+pg",
        met=at_least(rates["bulk"], max(rates["raw-noop"], rates["celery-defaults-pg"])),
    )
    for name in ("single", "bulk"):
        report.figure(
            f"e2e.{name}.worker_cpu_per_task",
            cpu[f"{name}.worker"],
            "ms",
            baselines=[
                ("raw celery+pg", cpu["raw-pg.worker"]),
                ("raw celery noop", cpu["raw-noop.worker"]),
                ("celery defaults+pg", cpu["celery-defaults-pg.worker"]),
            ],
            target="<= 1.5 ms" if name == "bulk" else "",
            met=(cpu[f"{name}.worker"] <= 1.5) if name == "bulk" else None,
        )
    report.figure("e2e.single.api_cpu_per_task", cpu["single.api"], "ms")
    report.figure(
        "e2e.bulk.api_cpu_per_task",
        cpu["bulk.api"],
        "ms",
        baselines=[("single submits", cpu["single.api"])],
    )


def _start_defaults_worker(stack: Stack, concurrency: int) -> Proc:
    """Start the Celery-with-its-defaults worker, logging warnings only (as the peers do)."""
    cmd = ["-m", "celery", "-A", "bench.baseline_celery:defaults_app", "worker"]
    cmd += ["-Q", baseline_celery.DEFAULTS_QUEUE, "--concurrency", str(concurrency)]
    cmd += ["-n", f"defaults-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
    cmd += ["--loglevel", "WARNING"]
    proc = stack.spawn("defaults-worker", cmd)
    deadline = time.monotonic() + 60
    while len(children(proc.pid)) < concurrency:
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the defaults worker did not start:\n{proc.log_text()[-3000:]}")
        time.sleep(0.1)
    time.sleep(1.0)  # its consumer starts after the pool
    return proc


def _check_statuses(stack: Stack, report: Report) -> None:
    with contextlib.closing(stack.connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status")
        rows = cur.fetchall()
    others = [f"{s}={c}" for s, c in rows if s != "COMPLETED"]
    if others:
        report.info("unexpected statuses: " + ", ".join(others))
