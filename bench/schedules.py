"""Schedules at scale: 10,000 schedules firing every minute, one real sweeper process.

Run: `.venv/bin/python bench/schedules.py --schedules 10000 --minutes 3`. It creates a database
of its own on the server of DATABASE_URL (default: the local one), stores --schedules cron
schedules `* * * * *` (echo tasks, owners spread over 40 tenants) straight from SQL, starts
`taskexec sweeper` as its own process and lets it fire for --minutes whole minutes. Reports:

- the sweeper's CPU (user + system, from /proc, over the run, as % of one core);
- per task, `created_at - scheduled_for` (the start of the transaction that fired it):
  p50 / p99 / max;
- per minute, when the slot's last task became visible (committed) and when its last message
  was in Redis, read by a poller every 25 ms around each slot (so to within 25 ms + a poll):
  the worst minute's figures are what "every slot fired within 2 s" is judged by;
- exactly one task per slot;
- a baseline from the same run: the database's share, i.e. one minute's inserts and
  advances (the sweeper's own statements, rendered beforehand) run on two connections with
  nothing else; the worst slot's commit is printed as a multiple of it.

No worker runs: the tasks wait in Redis (db 9, flushed at the end), and republishing is
pushed past the run so the figure is the schedule round alone. `--profile wall|gil` records
the sweeper with py-spy over the run and prints where its time went.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench import profiler  # noqa: E402
from bench.list_tasks import DEFAULT_SERVER, create_database, drop_database  # noqa: E402
from cli.base import ledger  # noqa: E402
from shared import schema, store  # noqa: E402
from shared.schedules import fired_task  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/9"  # 14 and 12 are used by other benches and tests
NAME = "taskexec_bench_schedules"
SEED = """
INSERT INTO schedules (id, owner, name, cron, timezone, task, next_run_at)
SELECT gen_random_uuid(), 'tenant-' || (n %% 40), 'every minute ' || n, '* * * * *', 'UTC',
       jsonb_build_object('taskDefinitionId', 'echo', 'input', jsonb_build_object('n', n)),
       date_trunc('minute', now()) + interval '1 minute'
FROM generate_series(1, %s) n
"""
POLL_SECONDS = 0.025
ROUND = 1000  # the sweeper's SCHEDULE_BATCH


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Poller(threading.Thread):
    """Records, around each slot, when its last task was committed and its last message queued.

    It polls only from just before a slot until that slot is complete in both places (or
    15 s have passed), so it does not load the machine between slots.
    """

    def __init__(self, url: str, per_slot: int, first_slot: datetime, slots: int) -> None:
        super().__init__(daemon=True)
        self.url, self.per_slot, self.first_slot, self.slots = url, per_slot, first_slot, slots
        self.committed: dict[datetime, float] = {}  # slot -> seconds after it
        self.queued: dict[datetime, float] = {}
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.kinds: dict[bytes, bool] = {}

    def _is_list(self, key: bytes) -> bool:
        if key not in self.kinds:
            self.kinds[key] = self.redis.type(key) == b"list"
        return self.kinds[key]

    def _queued(self) -> int:
        # The queues' lists (one per priority); other keys may share the db.
        keys = [k for k in self.redis.keys("*") if self._is_list(k)]
        if not keys:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return sum(pipe.execute())

    def run(self) -> None:
        with ledger(self.url) as conn:
            conn.autocommit = True
            for k in range(self.slots):
                slot = self.first_slot + timedelta(minutes=k)
                want = self.per_slot * (k + 1)
                time.sleep(max((slot - datetime.now(UTC)).total_seconds() - 0.5, 0))
                give_up = slot + timedelta(seconds=15)
                while datetime.now(UTC) < give_up and (
                    slot not in self.committed or slot not in self.queued
                ):
                    with conn.cursor() as cur:
                        cur.execute("SELECT count(*) FROM tasks WHERE schedule_id IS NOT NULL")
                        row = cur.fetchone()
                    seen = datetime.now(UTC)
                    if slot not in self.committed and row and row[0] >= want:
                        self.committed[slot] = (seen - slot).total_seconds()
                    if slot not in self.queued and self._queued() >= want:
                        self.queued[slot] = (datetime.now(UTC) - slot).total_seconds()
                    time.sleep(POLL_SECONDS)


def sql_floor(url: str) -> float:
    """Seconds two connections take to run one minute's writes (every schedule's task insert
    and advance, in rounds of 1,000, the same statements as the sweeper's) rendered
    beforehand: the database's part of a minute, with no claim and no Python in between.
    Run after the sweeper stopped, for each schedule's next (unfired) slot."""
    with ledger(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, updated_at, next_run_at, owner, task FROM schedules")
        rows = cur.fetchall()
        definition = store.get_definition(conn, "echo")
        assert definition is not None
        slots = [
            store.SlotTask(fired_task(task, definition, owner), sid, due)
            for sid, _, due, owner, task in rows
        ]
        progress = [
            store.Progress(sid, updated, due + timedelta(minutes=1), last_run_at=due)
            for sid, updated, due, _, _ in rows
        ]
        rounds = [
            (
                [r.sql(True) for r in store.render_slots(conn, slots[i : i + ROUND])],
                store.render_progress(conn, progress[i : i + ROUND]),
            )
            for i in range(0, len(rows), ROUND)
        ]
    work: queue.Queue[tuple[list[str], list[str]]] = queue.Queue()
    for item in rounds:
        work.put(item)

    def drain() -> None:
        with ledger(url) as conn:
            while True:
                try:
                    inserts, advances = work.get_nowait()
                except queue.Empty:
                    return
                store.fire_round(conn, inserts, advances)
                conn.commit()

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(drain) for _ in range(2)]:
            done.result()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--profile", choices=("wall", "gil"), default=None)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    url = create_database(server, NAME)
    proc = spy = None
    redis.Redis.from_url(REDIS_URL).flushdb()
    try:
        schema.migrate(url)
        # The first slot (the next whole minute) must come after the sweeper's start-up.
        if datetime.now(UTC).second >= 50:
            time.sleep(61 - datetime.now(UTC).second)
        with ledger(url) as conn, conn.cursor() as cur:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
            cur.execute(SEED, (args.schedules,))
            cur.execute("SELECT min(next_run_at) FROM schedules")
            row = cur.fetchone()
            assert row is not None
            first_slot: datetime = row[0]
            conn.commit()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": REDIS_URL,
            "TASKEXEC_REPUBLISH_AFTER": "86400",
            # No worker runs: a window as wide as a fleet that takes every slot of the run,
            # so every task goes out as it is fired (a narrow one leaves them to the releaser).
            "TASKEXEC_DISPATCH_WINDOW_MIN": str(args.schedules * (args.minutes + 1)),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "sweeper"], env=env, stdout=subprocess.DEVNULL
        )
        time.sleep(2)  # its start-up (imports) is not part of the steady state
        poller = Poller(url, args.schedules, first_slot, args.minutes)
        poller.start()
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        end = first_slot + timedelta(minutes=args.minutes - 1, seconds=20)
        run_seconds = (end - datetime.now(UTC)).total_seconds()
        if args.profile:
            spy = profiler.start(
                proc.pid,
                run_seconds,
                Path(os.environ.get("TMPDIR", "/tmp")) / "schedules.raw",
                mode=args.profile,
                subprocesses=False,
            )
        time.sleep(run_seconds)  # whole minutes, the last one fired
        cpu, elapsed = cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
        poller.join(20)
        with ledger(url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), count(DISTINCT (schedule_id, scheduled_for)),"
                " count(DISTINCT scheduled_for), count(*) FILTER (WHERE published_at IS NULL),"
                " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag),"
                " max(lag) FROM (SELECT *, EXTRACT(EPOCH FROM created_at - scheduled_for)"
                " AS lag FROM tasks WHERE schedule_id IS NOT NULL) t"
            )
            tasks, slots, minutes, waiting, (p50, p99), worst = cur.fetchone()
        print(
            f"{args.schedules} schedules, {minutes} minute(s) fired: {tasks} tasks for {slots}"
            f" slots ({'one per slot' if tasks == slots else 'DUPLICATES'});"
            f" expected {args.schedules * minutes}; {waiting} left to the releaser"
        )
        print(
            f"sweeper CPU {cpu:.1f}s over {elapsed:.0f}s = {100 * cpu / elapsed:.1f}% of one core;"
            f" fire lateness (created_at) p50 {p50:.3f}s, p99 {p99:.3f}s, max {worst:.3f}s"
        )

        def seconds(figures: dict[datetime, float]) -> str:
            return " ".join(f"{figures[s]:.2f}" if s in figures else "-" for s in sorted_slots)

        sorted_slots = [first_slot + timedelta(minutes=k) for k in range(args.minutes)]
        print(f"last task of each slot committed at slot + {seconds(poller.committed)} s")
        print(f"last message of each slot in Redis at slot + {seconds(poller.queued)} s")
        proc.terminate()
        proc.wait(10)
        floor = sql_floor(url)
        worst = max(poller.committed.values(), default=float("nan"))
        print(
            f"baseline: the same writes as SQL alone, rendered beforehand, 2 connections:"
            f" {floor:.2f}s per minute; the worst slot committed at {worst / floor:.2f}x that"
        )
        if spy is not None:
            spy.wait(30)
            raw = Path(os.environ.get("TMPDIR", "/tmp")) / "schedules.raw"
            profile = profiler.Profile.load(raw)
            print("\n".join(f"# {line}" for line in profiler.render("sweeper", profile)))
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        redis.Redis.from_url(REDIS_URL).flushdb()
        drop_database(server, NAME)


if __name__ == "__main__":
    main()
