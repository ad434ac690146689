"""Schedules at scale: 10,000 schedules firing every minute, one real sweeper process.

Run: `.venv/bin/python bench/schedules.py --schedules 10000 --minutes 3`. It creates a database
of its own on the server of DATABASE_URL (default: the local one), stores --schedules cron
schedules `* * * * *` (echo tasks, owners spread over 40 tenants) straight from SQL, starts
`taskexec sweeper` as its own process and lets it fire for --minutes whole minutes. Reports the
sweeper's CPU (user + system, from /proc, over the run, as % of one core), the fire lateness
(task created_at - scheduled_for: p50 / p99 / max) and checks exactly one task per slot. No
worker runs: the tasks wait in Redis (db 14, flushed at the end), and republishing is pushed
past the run so the figure is the schedule round alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench.list_tasks import DEFAULT_SERVER, create_database, drop_database  # noqa: E402
from cli.base import ledger  # noqa: E402
from shared import schema, store  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/14"
NAME = "taskexec_bench_schedules"
SEED = """
INSERT INTO schedules (id, owner, name, cron, timezone, task, next_run_at)
SELECT gen_random_uuid(), 'tenant-' || (n %% 40), 'every minute ' || n, '* * * * *', 'UTC',
       jsonb_build_object('taskDefinitionId', 'echo', 'input', jsonb_build_object('n', n)),
       date_trunc('minute', now()) + interval '1 minute'
FROM generate_series(1, %s) n
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=3)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    url = create_database(server, NAME)
    proc = None
    try:
        schema.migrate(url)
        with ledger(url) as conn, conn.cursor() as cur:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
            cur.execute(SEED, (args.schedules,))
            conn.commit()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": REDIS_URL,
            "TASKEXEC_REPUBLISH_AFTER": "86400",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "sweeper"], env=env, stdout=subprocess.DEVNULL
        )
        time.sleep(2)  # its start-up (imports) is not part of the steady state
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        start = datetime.now(UTC)
        time.sleep(60 * args.minutes + 20 - start.second)  # whole minutes, the last one fired
        cpu, elapsed = cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
        with ledger(url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), count(DISTINCT (schedule_id, scheduled_for)),"
                " count(DISTINCT scheduled_for),"
                " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag),"
                " max(lag) FROM (SELECT *, EXTRACT(EPOCH FROM created_at - scheduled_for)"
                " AS lag FROM tasks WHERE schedule_id IS NOT NULL) t"
            )
            tasks, slots, minutes, (p50, p99), worst = cur.fetchone()
        print(
            f"{args.schedules} schedules, {minutes} minute(s) fired: {tasks} tasks for {slots}"
            f" slots ({'one per slot' if tasks == slots else 'DUPLICATES'});"
            f" expected {args.schedules * minutes}"
        )
        print(
            f"sweeper CPU {cpu:.1f}s over {elapsed:.0f}s = {100 * cpu / elapsed:.1f}% of one core;"
            f" fire lateness p50 {p50:.3f}s, p99 {p99:.3f}s, max {worst:.3f}s"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        redis.Redis.from_url(REDIS_URL).flushdb()
        drop_database(server, NAME)


if __name__ == "__main__":
    main()
