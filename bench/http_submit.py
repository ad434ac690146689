"""Figure 1: submit throughput and latency over HTTP, against Flower and a minimal Flask app."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from bench.load import LoadResult, http_load
from bench.report import Report, at_least
from bench.stack import Proc, Stack
from bench.usage import Memory, cpu_seconds

SERVICE_BODY = {"taskDefinitionId": "echo", "input": {"message": "hello", "n": 1}}


@dataclass
class SubmitSettings:
    """The load each submit target gets."""

    connections: int = 32
    seconds: float = 10.0  # per target, split over `rounds`
    warmup: float = 2.0
    use_wrk: bool = True
    rounds: int = 2  # targets take turns, so drifting machine load hits each alike
    one_seconds: float = 4.0  # per target, on one connection (latency without queueing)


#: How the Flask baseline is served (the service runs config/gunicorn.py's defaults).
FLASK_GUNICORN = {"GUNICORN_WORKER_CLASS": "sync", "GUNICORN_WORKERS": "4", "GUNICORN_THREADS": "1"}


@dataclass(frozen=True)
class Measured:
    """A load run and the CPU time the server spent per request during it."""

    load: LoadResult
    cpu_ms: float


def _measure(
    server: Proc, url: str, body: object, key: str, seconds: float, cfg: SubmitSettings
) -> Measured:
    before = cpu_seconds(server.pid)
    load = http_load(url, body, key, cfg.connections, seconds, cfg.use_wrk)
    used = cpu_seconds(server.pid) - before
    return Measured(load, used * 1000 / load.requests if load.requests else float("nan"))


def _combine(parts: list[Measured]) -> Measured:
    """Sum the rounds; percentiles become request-weighted means of the rounds' values."""
    total = sum(m.load.requests for m in parts) or 1

    def mean(get: Any) -> float:
        return sum(get(m) * m.load.requests for m in parts) / total

    load = LoadResult(
        requests=sum(m.load.requests for m in parts),
        errors=sum(m.load.errors for m in parts),
        seconds=sum(m.load.seconds for m in parts),
        p50_ms=mean(lambda m: m.load.p50_ms),
        p90_ms=mean(lambda m: m.load.p90_ms),
        p99_ms=mean(lambda m: m.load.p99_ms),
        tool=parts[0].load.tool,
    )
    return Measured(load, mean(lambda m: m.cpu_ms))


def _stored(stack: Stack, table: str) -> int:
    with contextlib.closing(stack.connect()) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])  # type: ignore[index]


def run(
    stack: Stack, report: Report, api: Proc, api_url: str, cfg: SubmitSettings, memory: Memory
) -> None:
    """Measure POST /api/v1/tasks, Flower's async-apply and the Flask baseline; no workers run."""
    flower, flower_url = stack.start_flower()
    # The minimal path as issue 19 measured it: gunicorn's sync workers, four of them (one
    # request per process at a time, no thread hand-offs: the cheapest way to serve it).
    flask, flask_url = stack.start_gunicorn(
        "baseline-api", "bench.baseline_api:app", FLASK_GUNICORN
    )
    targets: dict[str, tuple[Proc, str, object, str, str]] = {
        "service": (api, api_url + "/api/v1/tasks", SERVICE_BODY, stack.api_key, "tasks"),
        "flower": (
            flower,
            flower_url + "/api/task/async-apply/taskexec.echo",
            {"args": [str(uuid.uuid4())]},
            "",
            "",
        ),
        "flask": (flask, flask_url + "/tasks", SERVICE_BODY, "", "bench_tasks"),
    }
    rounds: dict[str, list[Measured]] = {name: [] for name in targets}
    single: dict[str, LoadResult] = {}
    stored = dict.fromkeys(targets, 0)
    seconds = max(cfg.seconds / cfg.rounds, 1)
    try:
        for _server, url, body, key, _table in targets.values():
            if cfg.warmup:
                http_load(url, body, key, cfg.connections, max(cfg.warmup, 1), cfg.use_wrk)
        for _ in range(cfg.rounds):
            for name, (server, url, body, key, table) in targets.items():
                stack.reset()
                rounds[name].append(_measure(server, url, body, key, seconds, cfg))
                stored[name] += _stored(stack, table) if table else 0
        if cfg.one_seconds:
            for name, (_server, url, body, key, _table) in targets.items():
                stack.reset()
                single[name] = http_load(url, body, key, 1, cfg.one_seconds, cfg.use_wrk)
        memory.child("flask baseline gunicorn worker", flask.pid)
        memory.process("flower", flower.pid)
    finally:
        stack.stop(flask)
        stack.stop(flower)
        stack.reset()
    ours, theirs, plain = (_combine(rounds[name]) for name in targets)
    for name, m in zip(targets, (ours, theirs, plain), strict=True):
        rows = f", {stored[name]} rows stored" if targets[name][4] else ""
        report.info(f"{name}: {m.load.requests} responses, {m.load.errors} errors{rows}")

    report.info(
        f"load: {ours.load.tool}, {cfg.connections} connections, {cfg.rounds} rounds of"
        f" {seconds:.0f}s per target, taking turns"
    )
    for label, m in (("flower", theirs), ("flask", plain)):
        report.figure(f"baseline.{label}.submit.rps", m.load.rps, "req/s")
        report.figure(f"baseline.{label}.submit.p50", m.load.p50_ms, "ms")
        report.figure(f"baseline.{label}.submit.p99", m.load.p99_ms, "ms")
        report.figure(f"baseline.{label}.submit.cpu_per_request", m.cpu_ms, "ms")

    def bases(a: float, b: float) -> list[tuple[str, float]]:
        return [("flower", a), ("flask insert+publish", b)]

    o, t, p = ours.load, theirs.load, plain.load
    report.figure(
        "submit.rps",
        o.rps,
        "req/s",
        baselines=bases(t.rps, p.rps),
        target=">= 1.2x flower",
        met=at_least(o.rps, 1.2 * t.rps),
        note=f"{o.errors} errors of {o.requests} responses" if o.errors else "",
    )
    report.figure("submit.p50", o.p50_ms, "ms", baselines=bases(t.p50_ms, p.p50_ms))
    report.figure(
        "submit.p99",
        o.p99_ms,
        "ms",
        baselines=bases(t.p99_ms, p.p99_ms),
        target="<= flower p99",
        met=o.p99_ms <= t.p99_ms,
    )
    report.figure(
        "submit.cpu_per_request",
        ours.cpu_ms,
        "ms",
        baselines=bases(theirs.cpu_ms, plain.cpu_ms),
        target="<= 1.2x flask",
        met=ours.cpu_ms <= 1.2 * plain.cpu_ms,
        note="CPU time of the server's processes per request",
    )
    if single:
        _one_connection(report, single)


def _one_connection(report: Report, single: dict[str, LoadResult]) -> None:
    """The one-connection figures: each request's latency with nothing queued before it."""
    o, t, p = single["service"], single["flower"], single["flask"]
    for label, m in (("flower", t), ("flask", p)):
        report.figure(f"baseline.{label}.submit.one.p50", m.p50_ms, "ms")
        report.figure(f"baseline.{label}.submit.one.p99", m.p99_ms, "ms")
    bases = [("flower", t.p50_ms), ("flask insert+publish", p.p50_ms)]
    report.figure(
        "submit.one.p50", o.p50_ms, "ms", baselines=bases, target="<= 2.0 ms", met=o.p50_ms <= 2.0
    )
    bases = [("flower", t.p99_ms), ("flask insert+publish", p.p99_ms)]
    report.figure(
        "submit.one.p99", o.p99_ms, "ms", baselines=bases, target="<= 4 ms", met=o.p99_ms <= 4.0
    )
    report.info(f"one connection: {o.requests} requests to the service, {o.errors} errors")
