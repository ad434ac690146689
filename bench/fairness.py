"""Fair dispatch: a small owner's start delay behind another's backlog, limits' cost, releaser CPU.

Run: `.venv/bin/python bench/fairness.py` (`--backlog 10000 --small 10 --rounds 2`). It creates
a database of its own on the server of DATABASE_URL (default: the local one), uses Redis db 11,
starts a real Celery worker (`--concurrency`, default 2) and a real `taskexec sweeper` (the
releaser), and submits through the API in this process (the Flask app, the same code path as
gunicorn's workers: auth, group commit, the window check, the INSERT and the publish).

1. Start delay of B's tasks (start_time - created_at, both on the database's clock): owner B
   submits --small `sleep` tasks (--seconds each) alone, then again while owner A has a
   backlog of --backlog such tasks (submitted first, the fleet busy with them). Reported: B's
   p50/p95 in each case, their ratio, and what a first-come queue would have made B wait
   (A's backlog ahead of B at the measured throughput).
2. Throughput with limits against without: --tasks `echo` tasks from an owner under no limit,
   then from an owner whose key has maxRunning --max-running (never reached, so every task
   pays for the limit: the releaser's admission, the claim under advisory locks), in turns.
3. The releaser's CPU per released task: the sweeper process's CPU time over the backlog phase
   divided by the tasks the releaser published meanwhile (those not published at insert), and
   over the limited throughput turns (every task there goes through the releaser).
4. A held task's start after room opens: --held `sleep` tasks under a key limited to 1; the
   gap from each one's end to the next one's start (the NOTIFY, the releaser, the claim).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench.list_tasks import DEFAULT_SERVER, create_database, drop_database  # noqa: E402
from bench.report import percentile  # noqa: E402
from bench.usage import cpu_seconds  # noqa: E402
from cli.base import ledger  # noqa: E402
from cli.processes import worker_command  # noqa: E402
from config.settings import Settings  # noqa: E402
from shared import schema, store  # noqa: E402
from shared.credentials import issue_key  # noqa: E402
from workers.definitions import DIAGNOSTICS, load_registry  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/11"  # 12-15: the other benches
NAME = "taskexec_bench_fairness"
ROOT = Path(__file__).resolve().parent.parent
URL = "/api/v1/tasks"


class Api:
    """The API in this process (Flask's test client), one API key per owner."""

    def __init__(self, settings: Settings, url: str) -> None:
        from api.app import create_app

        self.app = create_app(settings)
        self.client = self.app.test_client()
        self.url = url
        self.keys: dict[str, dict[str, str]] = {}

    def key(self, owner: str, max_running: int | None = None) -> dict[str, str]:
        if owner not in self.keys:
            with ledger(self.url) as conn:
                _, secret = issue_key(
                    conn,
                    name=owner,
                    owner=owner,
                    permissions=["*"],
                    rate_limit=None,
                    max_running=max_running,
                )
            self.keys[owner] = {"X-API-Key": secret}
        return self.keys[owner]

    def bulk(self, owner: str, item: dict[str, Any], n: int) -> list[str]:
        ids: list[str] = []
        for start in range(0, n, 100):
            count = min(100, n - start)
            response = self.client.post(
                f"{URL}/bulk", json={"tasks": [item] * count}, headers=self.key(owner)
            )
            if response.status_code != 201:
                raise RuntimeError(f"bulk answered {response.status_code}: {response.get_json()}")
            ids += [i["id"] for i in response.get_json()["items"]]
        return ids


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with ledger(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def wait_done(url: str, ids: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (left,) = sql(
            url,
            "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[])"
            " AND status NOT IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')",
            (ids,),
        )[0]
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} task(s) not finished")
        time.sleep(0.05)


def start_delays(url: str, ids: list[str]) -> list[float]:
    rows = sql(
        url,
        "SELECT extract(epoch FROM start_time - created_at)::float FROM tasks"
        " WHERE id = ANY(%s::uuid[])",
        (ids,),
    )
    return sorted(r[0] for r in rows)


def drop_backlog(url: str, owner: str) -> None:
    """Cancel what is left of a backlog (by SQL: a bench's shortcut) and let the fleet go idle."""
    sql(
        url,
        "UPDATE tasks SET status = 'CANCELLED', cancel_requested_at = now(), end_time = now(),"
        " next_attempt_at = NULL, held_on = NULL, updated_at = now()"
        " WHERE owner = %s AND status IN ('PENDING', 'RETRYING')",
        (owner,),
    )
    deadline = time.monotonic() + 60
    while sql(url, "SELECT count(*) FROM tasks WHERE status = 'RUNNING'")[0][0]:
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet did not go idle")
        time.sleep(0.05)
    time.sleep(1.0)  # the cancelled tasks' messages are dropped by the workers


def ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.05, help="each sleep task's length")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000, help="per throughput turn")
    parser.add_argument("--max-running", type=int, default=1000)
    parser.add_argument("--held", type=int, default=100, help="tasks behind a key limit of 1")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    url = create_database(server, NAME)
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")},
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "TASKEXEC_DEFINITION_MODULES": DIAGNOSTICS,
        "TASKEXEC_RATELIMIT_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }
    settings = Settings.from_env(env)
    procs: list[subprocess.Popen[bytes]] = []
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), cores: {os.cpu_count()}")
    try:
        schema.migrate(url)
        with ledger(url) as conn:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
        cmd = worker_command(["standard-executor"], args.concurrency, "bench@%h")
        logs = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
        print(f"logs: {logs}")
        for name, argv in (
            ("worker", [*cmd, "--without-mingle", "--without-gossip"]),
            ("sweeper", [sys.executable, "-m", "cli", "sweeper"]),
        ):
            with open(logs / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
                )
        sweeper = procs[-1]
        api = Api(settings, url)
        sleep = {"taskDefinitionId": "sleep", "input": {"seconds": args.seconds}}
        time.sleep(4)
        wait_done(url, api.bulk("warmup", sleep, 20))  # the worker's children are up
        window = api.app.extensions["taskexec"].window
        print(
            f"fleet: {args.concurrency} slots; window {window.size('standard-executor')} messages;"
            f" tasks sleep {args.seconds * 1000:.0f} ms"
        )

        alone: list[float] = []
        behind: list[float] = []
        fifo: list[float] = []
        cpu: list[float] = []
        for turn in range(args.rounds):
            ids = api.bulk("bench-b", sleep, args.small)
            wait_done(url, ids)
            alone += start_delays(url, ids)

            started = time.time()
            api.bulk("bench-a", sleep, args.backlog)
            time.sleep(2.0)  # the fleet busy with A's work, the window full
            cpu_before = cpu_seconds(sweeper.pid)
            phase = sql(url, "SELECT now()")[0][0]
            ids = api.bulk("bench-b", sleep, args.small)
            wait_done(url, ids)
            behind += start_delays(url, ids)
            done, ahead = sql(
                url,
                "SELECT count(*) FILTER (WHERE status = 'COMPLETED'),"
                " count(*) FILTER (WHERE status IN ('PENDING', 'RETRYING'))"
                " FROM tasks WHERE owner = 'bench-a'",
            )[0]
            rate = done / (time.time() - started)
            fifo.append(ahead / rate if rate else float("inf"))
            released = sql(
                url,
                "SELECT count(*) FROM tasks WHERE published_at > %s"
                " AND published_at > created_at + interval '1 ms'",
                (phase,),
            )[0][0]
            cpu.append((cpu_seconds(sweeper.pid) - cpu_before) / max(released, 1))
            print(
                f"round {turn + 1}: B alone p95 {ms(alone[-args.small :], 95):.0f} ms;"
                f" behind A's {args.backlog} p95 {ms(behind[-args.small :], 95):.0f} ms"
                f" (a first-come queue: ~{fifo[-1]:.0f} s); A ran {rate:.1f} tasks/s;"
                f" releaser {cpu[-1] * 1e6:.0f} us CPU per released task ({released})"
            )
            drop_backlog(url, "bench-a")

        # 4. A held task's start once room opens: a key limited to 1, tasks one after another.
        keyed = {**sleep, "executionConfig": {"concurrency": {"key": "k", "limit": 1}}}
        ids = api.bulk("bench-keyed", keyed, args.held)
        wait_done(url, ids)
        rows = sql(
            url,
            "SELECT start_time, end_time FROM tasks WHERE id = ANY(%s::uuid[]) ORDER BY start_time",
            (ids,),
        )
        gaps = sorted((b[0] - a[1]).total_seconds() for a, b in zip(rows, rows[1:], strict=False))
        print(
            f"held behind a key limit of 1 ({args.held} tasks): room -> next start"
            f" p50 {ms(gaps, 50):.0f} ms, p99 {ms(gaps, 99):.0f} ms, max {gaps[-1] * 1000:.0f} ms"
            f" (never two at once: smallest gap {gaps[0] * 1000:.1f} ms)"
        )

        echo = {"taskDefinitionId": "echo", "input": {}}
        took = {"unlimited": 0.0, "limited": 0.0}
        limited_cpu = 0.0
        api.key("bench-limited", max_running=args.max_running)
        for turn in range(args.rounds):
            for variant, owner in (("unlimited", "bench-free"), ("limited", "bench-limited")):
                t0 = time.perf_counter()
                cpu0 = cpu_seconds(sweeper.pid)
                wait_done(url, api.bulk(owner, echo, args.tasks))
                took[variant] += time.perf_counter() - t0
                if variant == "limited":  # every one of these went through the releaser
                    limited_cpu += cpu_seconds(sweeper.pid) - cpu0
                print(f"round {turn + 1} {variant}: {args.tasks / (time.perf_counter() - t0):.0f}")
        n = args.tasks * args.rounds
        free, limited = n / took["unlimited"], n / took["limited"]
        print(
            f"B's start delay, {len(alone)} tasks each: alone p50 {ms(alone, 50):.0f} ms,"
            f" p95 {ms(alone, 95):.0f} ms; behind A's backlog of {args.backlog}:"
            f" p50 {ms(behind, 50):.0f} ms, p95 {ms(behind, 95):.0f} ms"
            f" (x{ms(behind, 95) / max(ms(alone, 95), 1e-9):.1f});"
            f" a first-come queue would have made B wait ~{sum(fifo) / len(fifo):.0f} s"
        )
        print(
            f"throughput ({args.tasks} echo tasks x {args.rounds}): no limit {free:.0f} tasks/s,"
            f" under maxRunning {args.max_running} {limited:.0f} tasks/s"
            f" (ratio {limited / free:.2f})"
        )
        print(
            f"releaser CPU per released task: {sum(cpu) / len(cpu) * 1e6:.0f} us"
            " (the sweeper process, backlog phases);"
            f" {limited_cpu / n * 1e6:.0f} us while it sent every limited echo task"
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
        with contextlib.suppress(Exception):
            redis.Redis.from_url(REDIS_URL).flushdb()
        drop_database(server, NAME)


if __name__ == "__main__":
    main()
