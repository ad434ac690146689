"""The queues read model over a large ledger: GET /api/v1/queues and the gauges' owner read.

Run: `.venv/bin/python bench/queues.py --rows 1000000 --active 300000`. It seeds a database of
its own (bench/list_tasks.py's rows, every one finished), turns --active of them into a backlog
(two thirds waiting in the ledger, a third dispatched, 1,000 running), then times the whole
GET /api/v1/queues through the Flask test client and shared/queues.top_owners (what a scrape
adds), first with migration 0010's partial index tasks_queues, then without it (the baseline,
same run: the planner's best over the other indexes), and prints both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.list_tasks import (  # noqa: E402
    DEFAULT_SERVER,
    add_key,
    create_database,
    drop_database,
    percentile,
    seed,
)
from cli.base import ledger  # noqa: E402
from config.settings import Settings  # noqa: E402
from shared import db, queues, schema, store  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402

NAME = "taskexec_bench_queues"
REDIS_URL = "redis://127.0.0.1:6379/14"
BACKLOG = """
WITH picked AS (
    SELECT id, row_number() OVER () AS n FROM tasks WHERE type <> 'MANUAL' LIMIT %(active)s
)
UPDATE tasks t SET
    status = CASE WHEN n <= 1000 THEN 'RUNNING' ELSE 'PENDING' END, end_time = NULL,
    published_at = CASE WHEN n <= %(active)s / 3 THEN now() END
FROM picked WHERE t.id = picked.id
"""


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--active", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    url = create_database(server, NAME)
    try:
        schema.migrate(url)
        with ledger(url) as conn:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
        seed(url, args.rows)
        conn = db.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET status = 'COMPLETED'"
                " WHERE status IN ('PENDING', 'RUNNING', 'RETRYING')"
            )
            cur.execute(BACKLOG, {"active": args.active})
            cur.execute("VACUUM ANALYZE tasks")
        settings = Settings.from_env(
            {"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "TASKEXEC_RATELIMIT_ENABLED": "false"}
        )
        from api.app import create_app

        app = create_app(settings)
        client = app.test_client()
        headers = add_key(url, "bench", ["tasks:admin"])
        database = app.extensions["taskexec"].db
        items = client.get("/api/v1/queues", headers=headers).get_json()["items"]
        print(f"{args.rows:,} tasks, {args.active:,} made active; load {os.getloadavg()[0]:.1f}")
        print("  " + "; ".join(f"{q['executor']}: {q}" for q in items))
        figures = {}
        for label in ("with tasks_queues", "without (baseline)"):
            api = timed(lambda: client.get("/api/v1/queues", headers=headers), args.repeat)
            owners = timed(lambda: queues.top_owners(database, 10), args.repeat)
            figures[label] = (percentile(api, 0.5), percentile(owners, 0.5))
            print(
                f"{label}: GET /api/v1/queues p50 {percentile(api, 0.5) * 1000:.1f} ms,"
                f" p99 {percentile(api, 0.99) * 1000:.1f} ms; top owners"
                f" p50 {percentile(owners, 0.5) * 1000:.1f} ms,"
                f" p99 {percentile(owners, 0.99) * 1000:.1f} ms",
                flush=True,
            )
            if label.startswith("with "):
                with conn.cursor() as cur:
                    cur.execute("DROP INDEX tasks_queues")
        (api_with, owners_with), (api_without, owners_without) = figures.values()
        print(
            f"ratio to the baseline: GET x{api_with / api_without:.2f},"
            f" top owners x{owners_with / owners_without:.2f} (load {os.getloadavg()[0]:.1f})"
        )
        conn.close()
        database.close()
    finally:
        drop_database(server, NAME)


if __name__ == "__main__":
    main()
