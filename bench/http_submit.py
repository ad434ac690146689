"""Figure 1: submit throughput and latency over HTTP, against Flower and a minimal Flask app."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

from bench.load import LoadResult, http_load
from bench.memory import Memory
from bench.report import Report, at_least
from bench.stack import Stack

SERVICE_BODY = {"taskDefinitionId": "echo", "input": {"message": "hello", "n": 1}}


@dataclass
class SubmitSettings:
    connections: int = 32
    seconds: float = 10.0
    warmup: float = 2.0
    use_wrk: bool = True


def _measure(url: str, body: object, key: str, cfg: SubmitSettings) -> LoadResult:
    if cfg.warmup:
        http_load(url, body, key, cfg.connections, max(cfg.warmup, 1), cfg.use_wrk)
    return http_load(url, body, key, cfg.connections, cfg.seconds, cfg.use_wrk)


def _stored(stack: Stack, table: str) -> int:
    with contextlib.closing(stack.connect()) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])  # type: ignore[index]


def run(stack: Stack, report: Report, api_url: str, cfg: SubmitSettings, memory: Memory) -> None:
    """Measure POST /api/v1/tasks, Flower's async-apply and the Flask baseline; no workers run."""
    flower, flower_url = stack.start_flower()
    flask, flask_url = stack.start_gunicorn("baseline-api", "bench.baseline_api:app")
    try:
        stack.reset()
        ours = _measure(api_url + "/api/v1/tasks", SERVICE_BODY, stack.api_key, cfg)
        stored = _stored(stack, "tasks")
        report.info(f"service: {ours.requests} responses, {ours.errors} errors, {stored} rows")
        stack.reset()
        flower_body = {"args": [str(uuid.uuid4())]}
        theirs = _measure(flower_url + "/api/task/async-apply/taskexec.echo", flower_body, "", cfg)
        report.info(f"flower: {theirs.requests} responses, {theirs.errors} errors")
        stack.reset()
        plain = _measure(flask_url + "/tasks", SERVICE_BODY, "", cfg)
        stored = _stored(stack, "bench_tasks")
        report.info(
            f"flask baseline: {plain.requests} responses, {plain.errors} errors, {stored} rows"
        )
        memory.child("flask baseline gunicorn worker", flask.pid)
        memory.process("flower", flower.pid)
    finally:
        stack.stop(flask)
        stack.stop(flower)
        stack.reset()

    report.info(f"load: {ours.tool}, {cfg.connections} connections, {cfg.seconds:.0f}s per target")
    for label, res in (("flower", theirs), ("flask", plain)):
        report.figure(f"baseline.{label}.submit.rps", res.rps, "req/s")
        report.figure(f"baseline.{label}.submit.p50", res.p50_ms, "ms")
        report.figure(f"baseline.{label}.submit.p99", res.p99_ms, "ms")
    bases = lambda a, b: [("flower", a), ("flask insert+publish", b)]  # noqa: E731
    report.figure(
        "submit.rps",
        ours.rps,
        "req/s",
        baselines=bases(theirs.rps, plain.rps),
        target=">= 1.5x flower",
        met=at_least(ours.rps, 1.5 * theirs.rps),
        note=_errors(ours),
    )
    report.figure("submit.p50", ours.p50_ms, "ms", baselines=bases(theirs.p50_ms, plain.p50_ms))
    report.figure(
        "submit.p99",
        ours.p99_ms,
        "ms",
        baselines=bases(theirs.p99_ms, plain.p99_ms),
        target="< flower p99",
        met=ours.p99_ms < theirs.p99_ms,
    )


def _errors(res: LoadResult) -> str:
    return f"{res.errors} errors of {res.requests} responses" if res.errors else ""
