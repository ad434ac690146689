"""Retention: purge a backlog of expired tasks while submits run; submit p99 with and without.

Run: `.venv/bin/python bench/retention.py --rows 1000000`. It seeds a database of its own on
the server of DATABASE_URL (default: the local one) with --rows finished tasks (each with an
attempt and a log line) straight from SQL as bench/list_tasks.py does. Then, for each
--config (batch:rows-per-second; default the Purger's own), on a fresh copy of that database
(CREATE DATABASE ... TEMPLATE), it sends submits through the Flask test client (the whole
view, group commit and Redis publish, no HTTP) from --clients threads, all along, while
windows of --window seconds alternate: no purge, then the sweeper's Purger (its real
statement, lock and pacing) deleting, until the backlog is gone. Submits are sorted by the
window they started in, so the baseline and the purge share the machine's other load (others
share this 2-core machine). Reports the purge's rows/s over its windows, both p99s, and the
load average; and, beside them, the latency of a one-row commit every 20 ms (the WAL flush a
submit's commit waits for, without the view around it) in both kinds of window.
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
    database_url,
    drop_database,
    percentile,
)
from cli.base import ledger  # noqa: E402
from config.settings import Settings  # noqa: E402
from shared import db, schema, store  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402
from workers.retention import PURGE_BATCH, Purger  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/14"
#: The purge's rate unless TASKEXEC_PURGE_RATE says otherwise.
DEFAULT_RATE = Settings.purge_rate
#: The seeded database and each config's copy of it (--database renames both).
SEEDED = "taskexec_bench_retention_seed"
COPY = "taskexec_bench_retention"


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


def submits(
    client: Any, headers: dict[str, str], stop: threading.Event, out: list[tuple[float, float]]
) -> None:
    body = {"taskDefinitionId": "echo", "input": {"message": "hi"}}
    while not stop.is_set():
        started = time.perf_counter()
        response = client.post("/api/v1/tasks", json=body, headers=headers)
        out.append((started, time.perf_counter() - started))
        assert response.status_code == 201, response.get_json()


def load(
    app: Any, headers: dict[str, str], clients: int, stop: threading.Event
) -> list[tuple[float, float]]:
    """Submit from `clients` threads until `stop`; (start, seconds) of every submit."""
    samples: list[tuple[float, float]] = []
    threads = [
        threading.Thread(target=submits, args=(app.test_client(), headers, stop, samples))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def checkpoint(url: str) -> None:
    """Start from a clean checkpoint, so full-page writes weigh on both kinds of window alike."""
    conn = db.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CHECKPOINT")
    conn.close()


def backend_cpu(purger: Purger) -> float:
    """CPU seconds the purger's Postgres backend has used (its pool holds one connection)."""
    with purger.db.connection(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]  # type: ignore[index]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


#: CPU seconds of the purger's backend in each purge window (the server runs on this host).
cpu_seconds: list[float] = []


def alternate(
    purger: Purger, window: float, stop: threading.Event, wal: Any
) -> list[tuple[str, float, float, int, int]]:
    """Windows of `window` seconds, no purge then purge, until the backlog is gone.

    Returns (kind, start, end, rows purged, WAL bytes written) per window. Pairing the two
    kinds in time is what makes the comparison fair on a machine others load: a neighbour's
    burst falls on both.
    """
    windows: list[tuple[str, float, float, int, int]] = []
    while True:
        started, lsn = time.perf_counter(), wal_position(wal)
        time.sleep(window)
        windows.append(("off", started, time.perf_counter(), 0, wal_position(wal) - lsn))
        started, lsn, cpu = time.perf_counter(), wal_position(wal), backend_cpu(purger)
        until = threading.Event()
        threading.Timer(window, until.set).start()
        purged = purger.purge(until)
        spent = backend_cpu(purger) - cpu
        windows.append(("on", started, time.perf_counter(), purged, wal_position(wal) - lsn))
        cpu_seconds.append(spent)
        if not until.is_set():  # the purge ran out of expired tasks before the window did
            until.set()
            stop.set()
            return windows


def wal_position(conn: Any) -> int:
    """Bytes of WAL the server has written so far."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
        return int(cur.fetchone()[0])


def commit_probe(url: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """Commit a one-row insert every 20 ms until `stop`: (start, seconds) of each commit.

    What a submit's commit waits for (its WAL flush, queued behind any WAL written before it),
    without the Flask view, the GIL and Redis around it.
    """
    conn = db.connect(url)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (at timestamptz)")
    conn.commit()
    while not stop.wait(0.02):
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO bench_commit_probe VALUES (now())")
        conn.commit()
        out.append((started, time.perf_counter() - started))
    conn.close()


def by_window(
    samples: list[tuple[float, float]], windows: list[tuple[str, float, float, int, int]]
) -> dict[str, list[float]]:
    """Sort (start, seconds) samples by the kind of window they started in."""
    kinds: dict[str, list[float]] = {"off": [], "on": []}
    for started, seconds in samples:
        for kind, begin, end, *_ in windows:
            if begin <= started < end:
                kinds[kind].append(seconds)
                break
    return kinds


def run(server: str, args: argparse.Namespace, batch: int, rate: float) -> None:
    """Submits throughout; the Purger deletes the whole backlog in every other window."""
    conn = db.connect(server)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{COPY}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{COPY}" TEMPLATE "{SEEDED}"')
    conn.close()
    url = database_url(server, COPY)
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
    load(app, headers, args.clients, timer(2.0))  # warm the pools and caches
    checkpoint(url)
    purger = Purger(settings, db.Database(url, max_connections=1))
    cpu_seconds.clear()
    purger.batch, purger.rate = batch, rate
    stop = threading.Event()
    windows: list[tuple[str, float, float, int, int]] = []
    loads: list[float] = []
    wal = db.connect(url)
    wal.autocommit = True

    def purge() -> None:
        windows.extend(alternate(purger, args.window, stop, wal))

    def sample_load() -> None:
        while not stop.wait(5):
            loads.append(os.getloadavg()[0])

    commits: list[tuple[float, float]] = []
    threads = [
        threading.Thread(target=purge),
        threading.Thread(target=sample_load),
        threading.Thread(target=commit_probe, args=(url, stop, commits)),
    ]
    for t in threads:
        t.start()
    samples = load(app, headers, args.clients, stop)
    for t in threads:
        t.join()
    kinds = by_window(samples, windows)
    probe = by_window(commits, windows)
    on_time = sum(end - begin for kind, begin, end, *_ in windows if kind == "on")
    off_time = sum(end - begin for kind, begin, end, *_ in windows if kind == "off")
    purged = sum(w[3] for w in windows)
    # WAL the purge adds: its windows' WAL rate over the others' (the submits write in both).
    wal_on = sum(w[4] for w in windows if w[0] == "on") / on_time
    wal_off = sum(w[4] for w in windows if w[0] == "off") / off_time
    wal.close()
    p99_off, p99_on = (percentile(kinds[k], 0.99) * 1000 for k in ("off", "on"))
    p50_off, p50_on = (percentile(kinds[k], 0.5) * 1000 for k in ("off", "on"))
    print(
        f"batch {batch}, at most {rate:,.0f} rows/s: purged {purged:,} tasks in {on_time:.1f} s of"
        f" purge windows: {purged / on_time:,.0f} rows/s"
        f" ({len(windows) // 2} pairs of {args.window:.0f} s windows);"
        f" WAL {(wal_on - wal_off) * on_time / purged:,.0f} bytes per purged task;"
        f" {purged / sum(cpu_seconds):,.0f} rows per CPU-second of its Postgres backend"
        f" ({sum(cpu_seconds) / on_time:.0%} of a core during its windows)"
    )
    print(
        f"  submits without purge: p50 {p50_off:.1f} ms, p99 {p99_off:.1f} ms,"
        f" {len(kinds['off']) / off_time:.0f}/s; during: p50 {p50_on:.1f} ms,"
        f" p99 {p99_on:.1f} ms, {len(kinds['on']) / on_time:.0f}/s:"
        f" p99 x{p99_on / p99_off:.2f}; load average {min(loads, default=0):.1f}"
        f"-{max(loads, default=0):.1f}",
        flush=True,
    )
    c50_off, c50_on, c99_off, c99_on = (
        percentile(probe[k], q) * 1000 for q in (0.5, 0.99) for k in ("off", "on")
    )
    print(
        f"  one-row commits every 20 ms without purge: p50 {c50_off:.1f} ms, p99 {c99_off:.1f} ms;"
        f" during: p50 {c50_on:.1f} ms, p99 {c99_on:.1f} ms: p99 x{c99_on / c99_off:.2f}",
        flush=True,
    )
    redis.Redis.from_url(REDIS_URL).flushdb()


def timer(seconds: float) -> threading.Event:
    """An event set after `seconds`."""
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return stop


def main() -> None:
    global SEEDED, COPY
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--window", type=float, default=10, help="Seconds of each window, no purge / purge."
    )
    parser.add_argument(
        "--config",
        action="append",
        help=f"batch:rows-per-second, repeatable (default {PURGE_BATCH}:{DEFAULT_RATE:.0f})",
    )
    parser.add_argument("--database", default=COPY, help="Name of the databases made.")
    parser.add_argument(
        "--keep-seed",
        action="store_true",
        help="Keep the seeded database for the next run, and reuse one of --rows if kept.",
    )
    args = parser.parse_args()
    COPY, SEEDED = args.database, f"{args.database}_seed"
    configs = [(int(b), float(r)) for b, r in (c.split(":") for c in args.config or [])] or [
        (PURGE_BATCH, DEFAULT_RATE)
    ]
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    try:
        if args.keep_seed and seeded_rows(server) == args.rows:
            schema.migrate(database_url(server, SEEDED))  # kept from an older checkout
        else:
            url = create_database(server, SEEDED)
            schema.migrate(url)
            with ledger(url) as conn:
                store.publish_definitions(conn, load_registry(DIAGNOSTICS))
            seed(url, args.rows)
        for batch, rate in configs:
            run(server, args, batch, rate)
    finally:
        redis.Redis.from_url(REDIS_URL).flushdb()
        drop_database(server, COPY)
        if not args.keep_seed:
            drop_database(server, SEEDED)


def seeded_rows(server: str) -> int | None:
    """Tasks in a seeded database kept by an earlier --keep-seed run; None without one."""
    try:
        conn = db.connect(database_url(server, SEEDED))
    except Exception:
        return None
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tasks")
        row = cur.fetchone()
    conn.close()
    return int(row[0]) if row else None


if __name__ == "__main__":
    main()
