"""Listing over a million tasks: GET /api/v1/tasks p50/p99 per filter, depth and cursor.

Run: `.venv/bin/python bench/list_tasks.py` (about two minutes on 2 cores). It creates a
database of its own on the server of DATABASE_URL (default: the local one), seeds it with
--rows tasks straight from SQL, and sends requests through the Flask test client: the whole
view (authentication, validation, both queries, JSON) without HTTP or gunicorn. Every figure
is also given as a ratio to the baseline measured in the same run, GET /api/v1/tasks/{id}.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402

from cli.base import ledger  # noqa: E402
from config.settings import Settings  # noqa: E402
from shared import db, schema, store  # noqa: E402
from shared.credentials import issue_key  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
TENANTS = 40
SPAN_DAYS = 30

# Definitions cycle with the row number; a definition's type goes with it.
SEED_SQL = """
INSERT INTO tasks (id, owner, task_definition_id, definition_version, workflow_instance_id,
    type, status, priority, executor, input, timeout_ms, retry_policy, attempts, published_at,
    start_time, end_time, created_at, updated_at)
SELECT gen_random_uuid(),
       CASE WHEN i %% 10 < 6 THEN 'orchestrator'
            ELSE 'tenant-' || lpad((i %% %(tenants)s)::text, 2, '0') END,
       (%(ids)s::text[])[1 + i %% %(kinds)s],
       '1.0.0',
       CASE WHEN i %% 5 = 0 THEN NULL ELSE 'wf-' || (i / 4) END,
       (%(types)s::text[])[1 + i %% %(kinds)s],
       -- The newest tasks are still moving; older ones have finished, most of them well.
       CASE WHEN i > %(rows)s - %(rows)s / 50 THEN
                (ARRAY['PENDING', 'RUNNING', 'RETRYING', 'PENDING'])[1 + (i / 7) %% 4]
            WHEN r < 0.90 THEN 'COMPLETED' WHEN r < 0.95 THEN 'FAILED'
            WHEN r < 0.98 THEN 'CANCELLED' ELSE 'TIMED_OUT' END,
       1, 'standard-executor', jsonb_build_object('orderId', 'ORD-' || i, 'n', i), 60000,
       '{"maxRetries": 0, "retryInterval": 1000, "backoffMultiplier": 2}', 1, at, at, at,
       at, at
FROM (SELECT i, random() AS r,
             now() - make_interval(secs => (%(rows)s - i) * %(step)s) AS at
      FROM generate_series(1, %(rows)s) AS i) numbered
"""


def database_url(server: str, name: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(server: str, name: str) -> str:
    conn = psycopg2.connect(server)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return database_url(server, name)


def drop_database(server: str, name: str) -> None:
    conn = psycopg2.connect(server)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def seed(url: str, rows: int) -> float:
    """Load `rows` tasks; indexes are dropped first and rebuilt after (much faster)."""
    started = time.perf_counter()
    definitions = sorted(load_registry(DIAGNOSTICS), key=lambda d: d.id)
    conn = db.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '256MB'")
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks'"
            " AND indexname <> 'tasks_pkey'"
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        cur.execute(
            SEED_SQL,
            {
                "rows": rows,
                "tenants": TENANTS,
                "kinds": len(definitions),
                "ids": [d.id for d in definitions],
                "types": [d.type.value for d in definitions],
                "step": SPAN_DAYS * 86400 / rows,
            },
        )
        for _, definition in indexes:
            cur.execute(definition)
        # As autovacuum would have: statistics, and the visibility map for index-only scans.
        cur.execute("VACUUM ANALYZE tasks")
    conn.close()
    return time.perf_counter() - started


def add_key(url: str, owner: str, permissions: list[str]) -> dict[str, str]:
    with ledger(url) as conn:
        _, secret = issue_key(
            conn, name=f"bench-{owner}", owner=owner, permissions=permissions, rate_limit=None
        )
    return {"X-API-Key": secret}


def sample_values(url: str) -> dict[str, list[Any]]:
    """Real ids, workflows and times to vary the requests with (no single hot row)."""
    conn = db.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id::text, workflow_instance_id FROM tasks TABLESAMPLE SYSTEM (1) LIMIT 2000"
        )
        picked = cur.fetchall()
        cur.execute("SELECT min(created_at), max(created_at) FROM tasks")
        span = cur.fetchone()
        assert span is not None
        first, last = span
    conn.close()
    return {
        "ids": [r[0] for r in picked],
        "workflows": [r[1] for r in picked if r[1]],
        "span": [first, last],
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Runner:
    """Times requests and prints one line per figure."""

    def __init__(self, client: Any, requests: int, warmup: int) -> None:
        self.client = client
        self.requests = requests
        self.warmup = warmup
        self.baseline_p50: float | None = None

    def get(self, path: str, headers: dict[str, str]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = self.client.get(path, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{path} -> {response.status_code}: {response.get_data(as_text=True)}")
        return elapsed, response.get_json()

    def measure(
        self,
        name: str,
        headers: dict[str, str],
        make_path: Callable[[int], str],
        requests: int | None = None,
    ) -> None:
        count = requests or self.requests
        for n in range(min(self.warmup, count)):
            self.get(make_path(n), headers)
        samples: list[float] = []
        body: dict[str, Any] = {}
        for n in range(count):
            elapsed, body = self.get(make_path(n), headers)
            samples.append(elapsed)
        self.report(name, samples, body)

    def report(self, name: str, samples: list[float], body: dict[str, Any]) -> None:
        p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
        extra = ""
        pagination = body.get("pagination")
        if pagination:
            exact = "" if pagination.get("totalItemsExact", True) else " (estimate)"
            extra = f" totalItems={pagination['totalItems']}{exact}"
        if self.baseline_p50 is None:
            self.baseline_p50 = p50
            ratio = "baseline"
        else:
            ratio = f"x{p50 / self.baseline_p50:.1f} baseline p50"
        print(
            f"list {name}: p50={p50:.2f}ms p99={p99:.2f}ms n={len(samples)}{extra} [{ratio}]",
            flush=True,
        )


def tasks(**params: Any) -> str:
    return "/api/v1/tasks?" + urlencode(params)


def run(url: str, args: argparse.Namespace) -> None:
    from api.app import create_app

    env_settings = os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")
    base = (
        Settings.from_env()
        if env_settings
        else Settings(
            database_url=url, redis_url="redis://127.0.0.1:6379/15", ratelimit_enabled=False
        )
    )
    settings = base.with_overrides(database_url=url)
    admin = add_key(url, "orchestrator", ["*"])
    tenant = add_key(url, "tenant-07", ["tasks:list", "tasks:read"])
    values = sample_values(url)
    rng = random.Random(7)
    definitions = sorted(d.id for d in load_registry(DIAGNOSTICS))
    types = ["AUTOMATED", "MANUAL", "INTEGRATION"]
    first, last = values["span"]

    def window(n: int) -> str:
        start = first + (last - first) * rng.random()
        return tasks(
            createdAfter=start.isoformat(),
            createdBefore=(start + (last - first) / (SPAN_DAYS * 24)).isoformat(),
        )

    app = create_app(settings)
    runner = Runner(app.test_client(), args.requests, args.warmup)
    runner.measure(
        "get-by-id", admin, lambda n: f"/api/v1/tasks/{values['ids'][n % len(values['ids'])]}"
    )
    runner.measure("no-filter", admin, lambda n: tasks())
    runner.measure("status=FAILED", admin, lambda n: tasks(status="FAILED"))
    runner.measure("status=PENDING.RUNNING", admin, lambda n: tasks(status="PENDING,RUNNING"))
    runner.measure(
        "workflowInstanceId",
        admin,
        lambda n: tasks(workflowInstanceId=rng.choice(values["workflows"])),
    )
    runner.measure(
        "taskDefinitionId", admin, lambda n: tasks(taskDefinitionId=rng.choice(definitions))
    )
    runner.measure("type", admin, lambda n: tasks(type=rng.choice(types)))
    runner.measure("created window 1h", admin, window)
    runner.measure("owner-scoped", tenant, lambda n: tasks())
    runner.measure("owner-scoped status=FAILED", tenant, lambda n: tasks(status="FAILED"))
    runner.measure("owner-scoped status=RETRYING", tenant, lambda n: tasks(status="RETRYING"))
    runner.measure("owner-scoped type=MANUAL", tenant, lambda n: tasks(type="MANUAL"))
    runner.measure("deep page=5000", admin, lambda n: tasks(page=5000))
    runner.measure(
        "deep page=5000 status=COMPLETED", admin, lambda n: tasks(page=5000, status="COMPLETED")
    )
    runner.measure("owner-scoped deep page=400", tenant, lambda n: tasks(page=400))
    cursor_walk(runner, admin, "cursor walk from page 1", tasks())
    deep_page = min(4999, args.rows // 20 - runner.requests - 1)
    _, deep = runner.get(tasks(page=deep_page), admin)
    cursor_walk(
        runner, admin, f"cursor walk from page {deep_page + 1}", tasks(cursor=deep["nextCursor"])
    )
    app.extensions["taskexec"].db.close()

    # What the capped count saves: the same list with every count exact.
    exact = create_app(settings.with_overrides(list_exact_count_max=0))
    slow = Runner(exact.test_client(), max(args.requests // 10, 10), 2)
    slow.baseline_p50 = runner.baseline_p50
    slow.measure("no-filter exact count", admin, lambda n: tasks())
    slow.measure("owner-scoped exact count", tenant, lambda n: tasks())
    exact.extensions["taskexec"].db.close()


def cursor_walk(runner: Runner, headers: dict[str, str], name: str, start: str) -> None:
    """Follow nextCursor page after page, timing each request."""
    samples: list[float] = []
    path, body = start, dict[str, Any]()
    for _ in range(runner.requests):
        elapsed, body = runner.get(path, headers)
        samples.append(elapsed)
        path = tasks(cursor=body["nextCursor"])
    runner.report(name, samples, body)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per figure")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", metavar="NAME", help="use this already seeded database")
    args = parser.parse_args(argv)
    server = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    name = args.reuse or f"taskexec_bench_list_{os.getpid()}"
    try:
        if args.reuse:
            url = database_url(server, name)
            schema.migrate(url)
        else:
            url = create_database(server, name)
            schema.migrate(url)
            conn = db.connect(url)
            with conn:
                store.publish_definitions(conn, load_registry(DIAGNOSTICS))
            conn.close()
            took = seed(url, args.rows)
            print(f"# seeded {args.rows} tasks in {took:.1f}s (database {name})", flush=True)
        print(f"# load average before: {_load()}", flush=True)
        run(url, args)
        print(f"# load average after: {_load()}", flush=True)
    finally:
        if not (args.keep or args.reuse):
            drop_database(server, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
