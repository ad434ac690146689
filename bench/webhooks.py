"""Webhooks: event-to-receiver latency on an idle system, and deliveries/s beside task throughput.

Run: `.venv/bin/python bench/webhooks.py --tasks 2000 --rounds 2`. It creates a database of its
own on the server of DATABASE_URL (default: the local one) and uses Redis db 13, starts a real
Celery worker (`--concurrency`, default 2) and, for the webhook parts, a real `taskexec
deliverer` process, and a threaded HTTP receiver in this process that counts what it gets.

1. Latency (idle): one subscription; 300 status changes, one every 20 ms, made by SQL; per
   event, receive time minus the event's `timestamp` (its status change's transaction):
   p50 / p99 / max.
2. Throughput: --tasks echo tasks are inserted and published (as the API does: INSERT, then
   one pipelined publish per 100) and the time until all are COMPLETED is measured, with no
   subscription ("baseline") and with enough subscriptions (each `task.started` and
   `task.completed`) that the tasks' events make at least --deliveries-per-second deliveries
   ("webhooks"); the variants take turns for --rounds rounds so drifting machine load hits
   both alike. Reported: tasks/s of each, the throughput ratio (webhooks / baseline), the
   deliveries/s the receiver saw while the tasks ran, and how long after the last task the
   last delivery arrived (the backlog; 0 means the deliverer kept up).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench.list_tasks import DEFAULT_SERVER, create_database, drop_database  # noqa: E402
from bench.report import percentile  # noqa: E402
from cli.base import ledger  # noqa: E402
from cli.processes import worker_command  # noqa: E402
from config.settings import Settings  # noqa: E402
from shared import outbox, schema, store  # noqa: E402
from shared.broker import Broker  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.webhook_signing import new_secret  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"
NAME = "taskexec_bench_webhooks"
ROOT = Path(__file__).resolve().parent.parent


class Receiver:
    """Counts deliveries and keeps (arrival time, event timestamp) for each."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        bench = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                now = time.time()
                stamp = json.loads(body)["timestamp"]
                with bench.lock:
                    bench.arrivals.append((now, stamp))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 256
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def reset(self) -> None:
        with self.lock:
            self.arrivals = []


def subscribe(url: str, target: str, events: list[str]) -> None:
    with ledger(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO webhooks (id, owner, admin, url, events, secret)"
            " VALUES (%s, 'bench', true, %s, %s, %s)",
            (uuid.uuid4(), target, events, new_secret()),
        )


def unsubscribe_all(url: str) -> None:
    with ledger(url) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE webhooks, webhook_events, webhook_deliveries, tasks CASCADE")


def echo_rows(n: int) -> list[store.NewTask]:
    return [
        store.NewTask(
            id=uuid.uuid4(),
            owner="bench",
            task_definition_id="echo",
            definition_version="1.0.0",
            workflow_instance_id=None,
            type="AUTOMATED",
            priority=1,
            executor="standard-executor",
            input={"n": i},
            timeout_ms=60_000,
            retry_policy={},
        )
        for i in range(n)
    ]


def latency(url: str, receiver: Receiver, events: int = 300) -> list[float]:
    """Seconds from each status change to its arrival at the receiver."""
    receiver.reset()
    subscribe(url, f"http://127.0.0.1:{receiver.port}/latency", ["task.completed"])
    rows = echo_rows(events)
    with ledger(url) as conn:
        store.insert_tasks(conn, rows)
    time.sleep(1)
    with ledger(url) as conn, conn.cursor() as cur:
        for row in rows:
            cur.execute(
                "UPDATE tasks SET status = 'COMPLETED', end_time = now() WHERE id = %s", (row.id,)
            )
            conn.commit()
            time.sleep(0.02)
    deadline = time.monotonic() + 30
    while receiver.count() < events and time.monotonic() < deadline:
        time.sleep(0.05)
    with receiver.lock:
        return [
            at - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            for at, stamp in receiver.arrivals
        ]


def run_tasks(url: str, settings: Settings, n: int, timeout: float = 300) -> float:
    """Insert and publish `n` echo tasks as the API does; seconds until all are COMPLETED."""
    db = Database(url, max_connections=2)
    broker = Broker(settings)
    rows = echo_rows(n)
    started = time.monotonic()
    for i in range(0, n, 100):
        with db.connection() as conn:
            tasks = store.insert_tasks(conn, rows[i : i + 100])
        outbox.publish(broker, db, [outbox.Dispatch.of(t) for t in tasks])
    with ledger(url) as conn, conn.cursor() as cur:
        conn.autocommit = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cur.execute("SELECT count(*) FROM tasks WHERE status = 'COMPLETED'")
            row = cur.fetchone()
            if row is not None and row[0] >= n:
                break
            time.sleep(0.05)
    took = time.monotonic() - started
    db.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--deliveries-per-second", type=int, default=500)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    url = create_database(server, NAME)
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")},
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "TASKEXEC_WEBHOOK_ALLOW_PRIVATE": "true",
        "TASKEXEC_DEFINITION_MODULES": DIAGNOSTICS,
        "PYTHONPATH": str(ROOT),
    }
    settings = Settings.from_env(env)
    procs: list[subprocess.Popen[bytes]] = []
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), cores: {os.cpu_count()}")
    try:
        schema.migrate(url)
        with ledger(url) as conn:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
        receiver = Receiver()
        cmd = worker_command(["standard-executor"], args.concurrency, "bench@%h")
        procs.append(
            subprocess.Popen(
                [*cmd, "--without-mingle", "--without-gossip"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deliverer = subprocess.Popen(
            [sys.executable, "-m", "cli", "deliverer"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(deliverer)
        time.sleep(3)
        run_tasks(url, settings, 100)  # warm-up: the worker's children are up

        seconds = sorted(latency(url, receiver))
        print(
            f"latency, status change -> receiver ({len(seconds)} events, idle):"
            f" p50 {percentile(seconds, 50) * 1000:.0f} ms,"
            f" p99 {percentile(seconds, 99) * 1000:.0f} ms, max {seconds[-1] * 1000:.0f} ms"
        )

        # Throughput: subscriptions enough for the wanted deliveries/s at the baseline rate.
        unsubscribe_all(url)
        base = args.tasks / run_tasks(url, settings, args.tasks)
        subscriptions = max(1, math.ceil(args.deliveries_per_second / (2 * base)))
        print(f"probe: {base:.0f} tasks/s without webhooks -> {subscriptions} subscriptions")
        totals = {"baseline": 0.0, "webhooks": 0.0}
        rates: list[float] = []
        lags: list[float] = []
        for turn in range(args.rounds):
            for variant in ("baseline", "webhooks"):
                unsubscribe_all(url)
                receiver.reset()
                if variant == "webhooks":
                    for s in range(subscriptions):
                        subscribe(
                            url,
                            f"http://127.0.0.1:{receiver.port}/s{s}",
                            ["task.started", "task.completed"],
                        )
                t0 = time.time()
                took = run_tasks(url, settings, args.tasks)
                totals[variant] += took
                line = f"round {turn + 1} {variant}: {args.tasks / took:.0f} tasks/s"
                if variant == "webhooks":
                    expected = args.tasks * 2 * subscriptions
                    during = receiver.count()
                    deadline = time.monotonic() + 120
                    while receiver.count() < expected and time.monotonic() < deadline:
                        time.sleep(0.05)
                    with receiver.lock:
                        last = max((a for a, _ in receiver.arrivals), default=t0)
                    rate = during / took
                    rates.append(rate)
                    lags.append(max(0.0, last - (t0 + took)))
                    line += (
                        f", {rate:.0f} deliveries/s while they ran,"
                        f" {receiver.count()}/{expected} delivered,"
                        f" last {lags[-1]:.2f} s after the last task"
                    )
                print(line)
        n = args.tasks * args.rounds
        baseline, webhooks = n / totals["baseline"], n / totals["webhooks"]
        print(
            f"throughput: baseline {baseline:.0f} tasks/s, with webhooks {webhooks:.0f} tasks/s"
            f" (ratio {webhooks / baseline:.3f}); deliveries/s {sum(rates) / len(rates):.0f};"
            f" worst backlog {max(lags):.2f} s"
        )
        print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.Redis.from_url(REDIS_URL).flushdb()
        drop_database(server, NAME)


if __name__ == "__main__":
    main()
