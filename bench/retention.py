"""Retention: purge a backlog of expired tasks while submits run; submit p99 with and without.

Run: `.venv/bin/python bench/retention.py --rows 1000000`. It creates a database of its own on
the server of DATABASE_URL (default: the local one), seeds --rows finished tasks (each with an
attempt and a log line) straight from SQL as bench/list_tasks.py does, then sends submits
through the Flask test client (the whole view, group commit and Redis publish, no HTTP) from
--clients threads: first with no purge (the baseline), then while the sweeper's Purger
deletes the backlog with its real batch and pacing. Reports rows/s and both p99s.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench.list_tasks import (  # noqa: E402
    DEFAULT_SERVER,
    SEED_SQL,
    add_key,
    create_database,
    drop_database,
    percentile,
)
from cli.base import ledger  # noqa: E402
from config.settings import Settings  # noqa: E402
from shared import db, schema, store  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402
from workers.retention import Purger  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/14"


def seed(url: str, rows: int) -> float:
    """Load `rows` tasks that ended 1 to 30 days ago, each with an attempt and a log line."""
    started = time.perf_counter()
    definitions = sorted(load_registry(DIAGNOSTICS), key=lambda d: d.id)
    conn = db.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            SEED_SQL,
            {
                "rows": rows,
                "tenants": 40,
                "kinds": len(definitions),
                "ids": [d.id for d in definitions],
                "types": [d.type.value for d in definitions],
                "step": 29 * 86400 / rows,
            },
        )
        # Every task finished a day ago or more: the whole backlog has expired under 1h.
        cur.execute(
            "UPDATE tasks SET status = 'COMPLETED', end_time = end_time - interval '1 day'"
            " WHERE status NOT IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')"
            " OR end_time > now() - interval '1 day'"
        )
        cur.execute(
            "INSERT INTO task_attempts (task_id, attempt, status, started_at, ended_at)"
            " SELECT id, 1, status, start_time, end_time FROM tasks"
        )
        cur.execute(
            "INSERT INTO task_logs (task_id, attempt, level, message)"
            " SELECT id, 1, 'INFO', 'processed order ' || (input ->> 'orderId') FROM tasks"
        )
        cur.execute("VACUUM ANALYZE")
        cur.execute(
            "SELECT pg_total_relation_size('tasks') + pg_total_relation_size("
            "'task_attempts') + pg_total_relation_size('task_logs')"
        )
        size = cur.fetchone()[0]  # type: ignore[index]
    conn.close()
    print(
        f"seeded {rows} tasks in {time.perf_counter() - started:.0f}s;"
        f" {size / rows:.0f} bytes per task (tasks + attempts + logs, with indexes)"
    )
    return size / rows


def submits(client: Any, headers: dict[str, str], stop: threading.Event, out: list[float]) -> None:
    body = {"taskDefinitionId": "echo", "input": {"message": "hi"}}
    while not stop.is_set():
        started = time.perf_counter()
        response = client.post("/api/v1/tasks", json=body, headers=headers)
        out.append(time.perf_counter() - started)
        assert response.status_code == 201, response.get_json()


def load(app: Any, headers: dict[str, str], clients: int, stop: threading.Event) -> list[float]:
    samples: list[float] = []
    threads = [
        threading.Thread(target=submits, args=(app.test_client(), headers, stop, samples))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--baseline-seconds", type=float, default=20)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    url = create_database(server, "taskexec_bench_retention")
    try:
        schema.migrate(url)
        with ledger(url) as conn:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
        seed(url, args.rows)
        settings = Settings.from_env(
            {
                "DATABASE_URL": url,
                "REDIS_URL": REDIS_URL,
                "TASKEXEC_RETENTION": "1h",
                "TASKEXEC_RATELIMIT_ENABLED": "false",
            }
        )
        from api.app import create_app

        app = create_app(settings)
        headers = add_key(url, "bench", ["*"])
        stop = threading.Event()
        timer = threading.Timer(args.baseline_seconds, stop.set)
        timer.start()
        base = load(app, headers, args.clients, stop)
        purger = Purger(settings, db.Database(url, max_connections=2))
        stop = threading.Event()
        purged: list[int] = []
        started = time.perf_counter()

        def purge() -> None:
            purged.append(purger.purge(threading.Event()))
            stop.set()

        worker = threading.Thread(target=purge)
        worker.start()
        during = load(app, headers, args.clients, stop)
        worker.join()
        elapsed = time.perf_counter() - started
        p99_base, p99_during = percentile(base, 0.99) * 1000, percentile(during, 0.99) * 1000
        print(
            f"purged {purged[0]} tasks in {elapsed:.1f}s: {purged[0] / elapsed:,.0f} rows/s"
            f" (batch {purger.batch}, pause ratio {purger.pause_ratio})"
        )
        print(
            f"submit p99 {p99_base:.1f} ms without purge ({len(base)} submits,"
            f" {len(base) / args.baseline_seconds:.0f}/s), {p99_during:.1f} ms during"
            f" ({len(during)} submits, {len(during) / elapsed:.0f}/s):"
            f" x{p99_during / p99_base:.2f}"
        )
    finally:
        redis.Redis.from_url(REDIS_URL).flushdb()
        drop_database(server, "taskexec_bench_retention")


if __name__ == "__main__":
    main()
