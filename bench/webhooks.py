"""Webhooks: event-to-receiver latency, one deliverer's drain rate, and deliveries beside tasks.

Run: `.venv/bin/python bench/webhooks.py --tasks 5000 --rounds 2 --subscriptions 5`. It creates
a database of its own on the server of DATABASE_URL (default: the local one) and uses Redis db
13, and starts a real Celery worker (`--concurrency`, default 2), a real `taskexec deliverer`
and a receiver in a process of its own (bench/webhook_receiver.py: asyncio, keep-alive, 204).
CPU is read from /proc for each part: the worker tree, the deliverer, the receiver, and the
Postgres backends of the bench's database split by whose they are (application_name
taskexec-<pid>: the deliverer's, the worker's, autovacuum, the rest).

0. Steady (`--steady RATE`, `--only-steady` for nothing else): one subscription; status changes
   by SQL at RATE a second for `--steady-seconds` (20), each in its own transaction, no worker
   running: the deliverer's CPU per delivery (and its backends', the receiver's) at a live
   pace, its batches as small as the poll makes them. Runs 4 % apart where the task turns
   differ by 15 %: the instrument for A/B of the deliverer.
1. Latency (idle): one subscription; 300 status changes, one every 20 ms, made by SQL; per
   event, receive time minus the event's `timestamp` (its status change's transaction):
   p50 / p99 / max.
2. Backlog (`--backlog`, 0 skips it): that many deliveries queued at once (tasks finished by
   SQL in one transaction, 5 subscriptions) and drained by the one deliverer with nothing else
   running: deliveries/s and CPU per delivery of the deliverer and its backends.
3. Throughput: --tasks echo tasks are inserted and published (as the API does: INSERT, then
   one pipelined publish per 100) and the time until all are COMPLETED is measured, with no
   subscription ("baseline") and with --subscriptions subscriptions (each `task.started` and
   `task.completed`; 0: enough that the tasks' events make --deliveries-per-second at the
   probed baseline rate, and only `task.completed` when one subscription to both would make
   more than 1.5x that rate) ("webhooks"). The variants take turns for --rounds rounds, the order
   flipped each round, VACUUM between turns, so drifting machine load hits both alike.
   Reported: tasks/s of each, the throughput ratio (webhooks / baseline; and each round's
   own, with their mean and its standard error: how far one sitting's figure may be off),
   the deliveries/s the receiver saw while the tasks ran, how long after the last task the
   last delivery arrived (0: the deliverer kept up), and the CPU per delivery (webhook turns
   minus baseline turns, over the deliveries made): the load-independent figure. With
   --trigger-turns, a
   third variant "trigger": the subscriptions with the deliverer stopped (SIGSTOP), so the
   status changes only queue their events (the trigger's cost alone); fanned out and sent
   after the turn.
   Also printed: per task, the CPU and the run-queue wait (/proc/<tid>/schedstat: runnable,
   waiting for a core) of the worker's processes and of its Postgres backends, per variant.
   Two more variants, experiments on where the loss comes from: --idle-turns, the deliverer
   under SCHED_IDLE (with --idle-receiver and --idle-backends, the receiver and the
   deliverer's Postgres backends too); --burner-turns CORES, no subscription but
   bench/cpu_burner.py beside the tasks using CORES of CPU under SCHED_IDLE (work that never
   holds a core the tasks want: what any work of that size costs them on this host).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402
import redis  # noqa: E402

from bench.list_tasks import DEFAULT_SERVER, create_database, drop_database  # noqa: E402
from bench.report import percentile  # noqa: E402
from bench.stack import children  # noqa: E402
from bench.usage import cpu_seconds, run_delay_seconds  # noqa: E402
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
    """bench/webhook_receiver.py in a process of its own: counts deliveries, keeps arrivals."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        port_file = workdir / "receiver.port"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "webhook_receiver.py"), str(port_file)],
            env=env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 10
        while not port_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _ask(self, method: str, path: str) -> Any:
        self.conn.request(method, path)
        return json.loads(self.conn.getresponse().read())

    def count(self) -> int:
        return int(self._ask("GET", "/stats")["count"])

    def wait_for(self, expected: int, seconds: float = 300) -> None:
        """Wait until `expected` deliveries have arrived (at most `seconds`)."""
        deadline = time.monotonic() + seconds
        while self.count() < expected and time.monotonic() < deadline:
            time.sleep(0.1)

    def arrivals(self) -> list[tuple[float, str]]:
        return [(float(a), str(s)) for a, s in self._ask("GET", "/arrivals")]

    def reset(self) -> None:
        self._ask("POST", "/reset")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


def backends_cpu(url: str, name: str) -> dict[int, tuple[str, float]]:
    """(who, CPU seconds so far) of each Postgres backend of the bench's database; who is the
    application_name, or `autovacuum` for an autovacuum worker."""
    with ledger(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pid, CASE WHEN backend_type = 'autovacuum worker' THEN 'autovacuum'"
            " ELSE application_name END FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        rows = [(int(pid), str(app)) for pid, app in cur.fetchall()]
    return {pid: (app, cpu_seconds(pid)) for pid, app in rows}


class Meter:
    """CPU seconds used between two samples by each part of the system under test."""

    def __init__(self, url: str, parts: dict[str, int], receiver: Receiver) -> None:
        self.url, self.parts, self.receiver = url, parts, receiver

    def sample(self) -> dict[str, Any]:
        worker = self.parts["worker"]
        return {
            **{name: cpu_seconds(pid) for name, pid in self.parts.items()},
            # Time the worker's processes waited for a core (not CPU: a delay on its path).
            "worker-waited": sum(run_delay_seconds(pid) for pid in [worker, *children(worker)]),
            "receiver": self.receiver.cpu(),
            "postgres": backends_cpu(self.url, NAME),
            "pg-delays": {pid: run_delay_seconds(pid) for pid in backends_cpu(self.url, NAME)},
            "machine": machine_cpu(),
        }

    def used(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """The CPU each part used; Postgres split by whose backend it is."""
        out: dict[str, float] = {}
        for key, value in after.items():
            if key not in ("postgres", "pg-delays"):
                out[key] = value - before[key]
        # A backend that left between the samples is lost (the worker's and the deliverer's
        # are long-lived); a new one counts from zero. Backends are named taskexec-<pid>.
        tree = [self.parts["worker"], *children(self.parts["worker"])]
        workers = {f"taskexec-{pid}" for pid in tree}
        whose = {f"taskexec-{self.parts['deliverer']}": "pg-deliverer"}
        whose.update({app: "pg-worker" for app in workers})
        whose["autovacuum"] = "pg-autovacuum"
        for key in ("pg-deliverer", "pg-worker", "pg-autovacuum", "pg-bench"):
            out[key] = 0.0
        out["pg-worker-waited"] = 0.0
        for pid, (app, cpu) in after["postgres"].items():
            used = cpu - before["postgres"].get(pid, (app, 0.0))[1]
            out[whose.get(app, "pg-bench")] += used
            if whose.get(app) == "pg-worker" and pid in after["pg-delays"]:
                out["pg-worker-waited"] += after["pg-delays"][pid] - before["pg-delays"].get(
                    pid, 0.0
                )
        return out


def vacuum(url: str) -> None:
    """VACUUM ANALYZE between turns: each turn starts from the same kind of tables."""
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def subscribe(url: str, target: str, events: list[str], workflow: str | None = None) -> None:
    """A subscription of the bench's owner (admin) to `events`, filtered on `workflow` if set."""
    with ledger(url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO webhooks (id, owner, admin, url, events, secret, workflow_instance_id)"
            " VALUES (%s, 'bench', true, %s, %s, %s, %s)",
            (uuid.uuid4(), target, events, new_secret(), workflow),
        )


def unsubscribe_all(url: str) -> None:
    # The TRUNCATE's locks, taken table by table, may meet a deliverer's statement taking
    # them in another order: Postgres then cancels one of the two (a deadlock). Ours again.
    for tries_left in range(4, -1, -1):
        try:
            with ledger(url) as conn, conn.cursor() as cur:
                cur.execute(
                    "TRUNCATE webhooks, webhook_event_queue, webhook_events, webhook_deliveries,"
                    " tasks CASCADE"
                )
            return
        except psycopg2.errors.DeadlockDetected:
            if not tries_left:
                raise
            time.sleep(0.1)


#: The workflow instance a share of the throughput turns' tasks belong to, and the one the
#: subscriptions filter on: the events of that share make the deliveries/s asked for.
WORKFLOW = "bench-webhooks"


def echo_rows(n: int, share: float = 0.0) -> list[store.NewTask]:
    """`n` echo tasks; `share` of them (spread evenly) in the workflow WORKFLOW."""
    return [
        store.NewTask(
            id=uuid.uuid4(),
            owner="bench",
            task_definition_id="echo",
            definition_version="1.0.0",
            workflow_instance_id=WORKFLOW if int((i + 1) * share) > int(i * share) else None,
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
    return [
        at - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        for at, stamp in receiver.arrivals()
    ]


def drain(url: str, receiver: Receiver, meter: Meter, deliveries: int, subscriptions: int) -> str:
    """Queue `deliveries` at once (a backlog: tasks finished by SQL in one transaction) and
    time one deliverer draining them; its CPU per delivery, with nothing else running."""
    unsubscribe_all(url)
    vacuum(url)
    for s in range(subscriptions):
        subscribe(url, f"http://127.0.0.1:{receiver.port}/b{s}", ["task.completed"])
    rows = echo_rows(deliveries // subscriptions)
    with ledger(url) as conn:
        store.insert_tasks(conn, rows)
    receiver.reset()
    expected = len(rows) * subscriptions
    before = meter.sample()
    started = time.monotonic()
    with ledger(url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET status = 'COMPLETED', end_time = now() WHERE id = ANY (%s)",
            ([r.id for r in rows],),
        )
    queued = time.monotonic() - started
    deadline = time.monotonic() + 600
    while receiver.count() < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    took = time.monotonic() - started - queued
    used = meter.used(before, meter.sample())
    return (
        f"backlog: {expected} deliveries queued in {queued:.1f} s, drained by one deliverer in"
        f" {took:.1f} s ({receiver.count() / took:.0f} deliveries/s); cpu per delivery (us):"
        f" deliverer {used['deliverer'] / expected * 1e6:.0f},"
        f" its postgres backends {used['pg-deliverer'] / expected * 1e6:.0f},"
        f" receiver {used['receiver'] / expected * 1e6:.0f}"
    )


def steady(url: str, receiver: Receiver, meter: Meter, rate: int, seconds: float) -> str:
    """Status changes by SQL at `rate` a second for `seconds` (one subscription, no worker
    running): the deliverer's CPU per delivery at a live pace, its batches as small as the
    poll makes them, without the task workers' noise. An A/B instrument for the deliverer."""
    unsubscribe_all(url)
    vacuum(url)
    subscribe(url, f"http://127.0.0.1:{receiver.port}/steady", ["task.completed"])
    rows = echo_rows(int(rate * seconds))
    with ledger(url) as conn:
        store.insert_tasks(conn, rows)
    receiver.reset()
    with ledger(url) as conn, conn.cursor() as cur:
        # Each change commits alone, as a worker's does; no wait for the WAL flush, so one
        # connection keeps the pace. Opened before the first sample: its backend is measured.
        cur.execute("SET synchronous_commit = off")
        conn.commit()
        before = meter.sample()
        own = time.process_time()
        started = time.monotonic()
        for i, row in enumerate(rows):
            pause = started + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            cur.execute(
                "UPDATE tasks SET status = 'COMPLETED', end_time = now() WHERE id = %s", (row.id,)
            )
            conn.commit()
        paced = time.monotonic() - started
        deadline = time.monotonic() + 60
        while receiver.count() < len(rows) and time.monotonic() < deadline:
            time.sleep(0.05)
        used = meter.used(before, meter.sample())
        own = time.process_time() - own
    seconds_late = sorted(
        at - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        for at, stamp in receiver.arrivals()
    )
    n = len(rows)
    return (
        f"steady: {n} status changes at {n / paced:.0f}/s, {receiver.count()}/{n} delivered"
        f" (p50 {percentile(seconds_late, 50) * 1000:.0f} ms, p99"
        f" {percentile(seconds_late, 99) * 1000:.0f} ms); cpu per delivery (us):"
        f" deliverer {used['deliverer'] / n * 1e6:.0f},"
        f" its postgres backends {used['pg-deliverer'] / n * 1e6:.0f},"
        f" receiver {used['receiver'] / n * 1e6:.0f},"
        f" the changes' backend (trigger and update) {used['pg-bench'] / n * 1e6:.0f},"
        f" machine less this bench {(used['machine'] - own) / n * 1e6:.0f}"
    )


def run_tasks(
    url: str, settings: Settings, n: int, timeout: float = 300, share: float = 0.0
) -> float:
    """Insert and publish `n` echo tasks as the API does; seconds until all are COMPLETED."""
    db = Database(url, max_connections=2)
    broker = Broker(settings)
    rows = echo_rows(n, share)
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


def renice(pid: int, value: int | None) -> int:
    """Set every thread of a process to a nice value (Linux: nice is per thread); None: to
    the main thread's. Returns the main thread's value before."""
    before = os.getpriority(os.PRIO_PROCESS, pid)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), before if value is None else value)
        except ProcessLookupError:
            pass  # a thread that ended
    return before


def set_idle(pid: int, idle: bool) -> None:
    """Every thread of a process to SCHED_IDLE (any other runnable thread preempts it at once,
    where a nice value only shares the CPU by weight), or back to SCHED_OTHER (its nice kept)."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setscheduler(int(tid), policy, os.sched_param(0))
        except ProcessLookupError:
            pass  # a thread that ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--deliveries-per-second", type=int, default=500)
    parser.add_argument("--subscriptions", type=int, default=0, help="fixed count (0: probe)")
    parser.add_argument("--backlog", type=int, default=20000, help="deliveries drained (0: skip)")
    parser.add_argument("--only-backlog", action="store_true")
    parser.add_argument(
        "--steady",
        type=int,
        default=0,
        metavar="RATE",
        help="status changes a second made by SQL, no worker running, for --steady-seconds:"
        " the deliverer's CPU per delivery at that pace (0: skip)",
    )
    parser.add_argument("--steady-seconds", type=float, default=20.0)
    parser.add_argument("--only-steady", action="store_true", help="skip the other phases")
    parser.add_argument(
        "--trigger-turns",
        action="store_true",
        help="a third variant: the subscriptions, the deliverer stopped (the trigger alone)",
    )
    parser.add_argument(
        "--poll", type=float, help="the deliverer's TASKEXEC_WEBHOOK_POLL (default: its default)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the worker and the deliverer (TASKEXEC_* from the shell are not"
        " passed: the run uses the defaults unless told here); repeatable",
    )
    parser.add_argument(
        "--niced-turns",
        type=int,
        default=0,
        metavar="NICE",
        help='a third variant, "niced": as the webhook turns, with every thread of the'
        " deliverer at this nice value (the worker's and Postgres's unchanged), then back at"
        " its own (TASKEXEC_WEBHOOK_NICE, default 10; 0 for the comparison)",
    )
    parser.add_argument(
        "--idle-turns",
        action="store_true",
        help='a variant "idle": as the webhook turns, with every thread of the deliverer under'
        " SCHED_IDLE (TASKEXEC_WEBHOOK_NICE=idle), then back",
    )
    parser.add_argument(
        "--burner-turns",
        type=float,
        default=0.0,
        metavar="CORES",
        help='a variant "burner": as the baseline (no subscription), beside bench/cpu_burner.py'
        " using CORES of CPU under SCHED_IDLE: does any work beside the tasks slow them, even"
        " when it never holds a core they want?",
    )
    parser.add_argument(
        "--idle-receiver",
        action="store_true",
        help="the idle turns put the receiver under SCHED_IDLE too (an experiment: how much of"
        " the tasks' loss is the local receiver's)",
    )
    parser.add_argument(
        "--idle-backends",
        action="store_true",
        help="the idle turns put the deliverer's Postgres backends under SCHED_IDLE too (an"
        " experiment only: a deliverer cannot do that to its backends)",
    )
    parser.add_argument(
        "--nice-all",
        action="store_true",
        help="the niced turns renice the deliverer's Postgres backends and the receiver too",
    )
    parser.add_argument(
        "--exact-rate",
        action="store_true",
        help="make the deliveries/s asked for, not more: only a share of the tasks (a workflow"
        " the subscriptions filter on) sends events, when every task's events would"
        " overshoot it; the share is aimed again after each webhook turn, at the rate it saw."
        " One subscription takes both events then, so the share can make up to twice the"
        " tasks' pace",
    )
    args = parser.parse_args()
    # SIGTERM (and SIGINT, which a shell's background job ignores) end the run through the
    # `finally` below, which stops every process it started and drops its database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    server = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    url = create_database(server, NAME)
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")},
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "TASKEXEC_WEBHOOK_ALLOW_PRIVATE": "true",
        **({"TASKEXEC_WEBHOOK_POLL": str(args.poll)} if args.poll is not None else {}),
        **dict(pair.split("=", 1) for pair in args.env),
        "TASKEXEC_DEFINITION_MODULES": DIAGNOSTICS,
        "PYTHONPATH": str(ROOT),
    }
    settings = Settings.from_env(env)
    procs: list[subprocess.Popen[bytes]] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), cores: {os.cpu_count()}")
    try:
        schema.migrate(url)
        with ledger(url) as conn:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
        receiver = Receiver(env, workdir)
        procs.append(receiver.proc)  # type: ignore[arg-type]
        cmd = worker_command(["standard-executor"], args.concurrency, "bench@%h")
        worker = subprocess.Popen(
            [*cmd, "--without-mingle", "--without-gossip"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(worker)
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
        meter = Meter(url, {"worker": worker.pid, "deliverer": deliverer.pid}, receiver)
        if args.steady:
            print(steady(url, receiver, meter, args.steady, args.steady_seconds), flush=True)
        if args.only_steady:
            return

        seconds = sorted(latency(url, receiver))
        print(
            f"latency, status change -> receiver ({len(seconds)} events, idle):"
            f" p50 {percentile(seconds, 50) * 1000:.0f} ms,"
            f" p99 {percentile(seconds, 99) * 1000:.0f} ms, max {seconds[-1] * 1000:.0f} ms"
        )

        if args.backlog:
            print(drain(url, receiver, meter, args.backlog, 5), flush=True)
        if args.only_backlog:
            return

        # Throughput: subscriptions enough for the wanted deliveries/s at the baseline rate.
        unsubscribe_all(url)
        subscriptions = args.subscriptions
        wanted = ["task.started", "task.completed"]
        share = 0.0  # of the tasks in WORKFLOW, the subscriptions' filter (0: no filter)
        if not subscriptions:
            base = 1000 / run_tasks(url, settings, 1000)
            subscriptions = max(1, math.ceil(args.deliveries_per_second / (2 * base)))
            if 2 * base > 1.5 * args.deliveries_per_second and not args.exact_rate:
                # One subscription to both events would overshoot the rate asked for: one
                # event per task (its completion) comes closer. (An exact rate keeps both,
                # for a share of the tasks: re-aimed, that share may grow to twice the
                # tasks' pace, where one event per task could not reach a rate above it.)
                wanted = ["task.completed"]
                subscriptions = max(1, round(args.deliveries_per_second / base))
            made = len(wanted) * subscriptions * base  # deliveries/s at the baseline's pace
            if args.exact_rate and subscriptions == 1 and made > args.deliveries_per_second:
                # One subscription, filtered to a share of the tasks: the rate asked for at
                # the baseline's pace (the tasks of both variants carry the same workflow).
                share = args.deliveries_per_second / made
            print(
                f"probe: {base:.0f} tasks/s without webhooks -> {subscriptions}"
                f" subscription(s) to {' and '.join(wanted)}"
                + (f", {share:.0%} of the tasks (a workflow filter)" if share else "")
            )
        per_task = len(wanted) * subscriptions  # deliveries (and queued events) per task
        trigger_events = 0  # events the trigger turns queued
        variants = ["baseline", "webhooks"] + (["trigger"] if args.trigger_turns else [])
        if args.niced_turns:
            variants.append("niced")
        if args.idle_turns:
            variants.append("idle")
        if args.burner_turns:
            variants.append("burner")
        totals = dict.fromkeys(variants, 0.0)
        cpu: dict[str, dict[str, float]] = {v: {} for v in variants}
        rates: list[float] = []
        lags: list[float] = []
        delivered = 0
        took_by_round: list[dict[str, float]] = []  # each round's seconds per variant
        for turn in range(args.rounds):
            took_by_round.append({})
            # Interleaved, and the order turns each round: drifting load hits all alike.
            shift = turn % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                sending = int(args.tasks * share) if share else args.tasks  # tasks with events
                unsubscribe_all(url)
                vacuum(url)
                receiver.reset()
                if variant in ("webhooks", "trigger", "niced", "idle"):
                    for s in range(subscriptions):
                        subscribe(
                            url,
                            f"http://127.0.0.1:{receiver.port}/s{s}",
                            wanted,
                            WORKFLOW if share else None,
                        )
                load = os.getloadavg()[0]
                if variant == "trigger":
                    os.kill(deliverer.pid, signal.SIGSTOP)  # events are queued, none sent
                if variant == "niced":
                    # The deliverer nices itself (TASKEXEC_WEBHOOK_NICE, 10 by default): the
                    # main thread keeps that value through the turn, to go back to after.
                    own_nice = renice(deliverer.pid, args.niced_turns)
                    others = []  # the deliverer's Postgres backends and the receiver
                    if args.nice_all:
                        others = [receiver.proc.pid] + [
                            pid
                            for pid, (who, _) in backends_cpu(url, NAME).items()
                            if who == f"taskexec-{deliverer.pid}"
                        ]
                    for pid in others:
                        renice(pid, args.niced_turns)
                if variant == "burner":
                    burner = subprocess.Popen(
                        [
                            sys.executable,
                            str(ROOT / "bench" / "cpu_burner.py"),
                            str(args.burner_turns),
                        ]
                    )
                    set_idle(burner.pid, True)
                if variant == "idle":
                    idled = [deliverer.pid]
                    if args.idle_receiver:
                        idled.append(receiver.proc.pid)
                    if args.idle_backends:
                        idled += [
                            pid
                            for pid, (who, _) in backends_cpu(url, NAME).items()
                            if who == f"taskexec-{deliverer.pid}"
                        ]
                    for pid in idled:
                        set_idle(pid, True)
                t0 = time.time()
                before = meter.sample()
                took = run_tasks(url, settings, args.tasks, share=share)
                line = f"round {turn + 1} {variant}: {args.tasks / took:.0f} tasks/s"
                if variant == "burner":
                    line += f", burner {cpu_seconds(burner.pid) / took:.2f} cores"
                    burner.kill()
                    burner.wait()
                if variant == "trigger":
                    used = meter.used(before, meter.sample())
                    os.kill(deliverer.pid, signal.SIGCONT)
                    expected = sending * per_task
                    receiver.wait_for(expected)
                    line += f" ({receiver.count()}/{expected} delivered afterwards)"
                    trigger_events += sending * len(wanted)
                if variant == "idle":
                    # As a webhook turn's line: is it keeping up while yielding all the more?
                    expected = sending * per_task
                    during = receiver.count()
                    receiver.wait_for(expected)
                    for pid in idled:
                        set_idle(pid, False)
                    last = max((a for a, _ in receiver.arrivals()), default=t0)
                    line += (
                        f", {during / took:.0f} deliveries/s while they ran,"
                        f" {receiver.count()}/{expected} delivered,"
                        f" last {max(0.0, last - (t0 + took)):.2f} s after the last task"
                    )
                if variant == "niced":
                    expected = sending * per_task
                    receiver.wait_for(expected)
                    os.setpriority(os.PRIO_PROCESS, deliverer.pid, own_nice)
                    renice(deliverer.pid, None)
                    for pid in others:
                        renice(pid, 0)
                    line += f", {receiver.count() / took:.0f} deliveries/s"
                if variant == "webhooks":
                    expected = sending * per_task
                    during = receiver.count()
                    receiver.wait_for(expected)
                    got = receiver.arrivals()
                    last = max((a for a, _ in got), default=t0)
                    rate = during / took
                    rates.append(rate)
                    if share:
                        # The webhook turns run slower than the probe: the share that made
                        # the rate asked for at the probe's pace makes less. Aim again.
                        share = min(1.0, share * args.deliveries_per_second / max(rate, 1.0))
                    lags.append(max(0.0, last - (t0 + took)))
                    delivered += len(got)
                    line += (
                        f", {rate:.0f} deliveries/s while they ran,"
                        f" {len(got)}/{expected} delivered,"
                        f" last {lags[-1]:.2f} s after the last task"
                    )
                if variant != "trigger":
                    used = meter.used(before, meter.sample())
                totals[variant] += took
                took_by_round[-1][variant] = took
                for key, value in used.items():
                    cpu[variant][key] = cpu[variant].get(key, 0.0) + value
                line += f"; load {load:.1f}; cpu s " + ", ".join(
                    f"{k} {v:.1f}" for k, v in used.items()
                )
                print(line, flush=True)
        n = args.tasks * args.rounds
        baseline, webhooks = n / totals["baseline"], n / totals["webhooks"]
        print(
            f"throughput: baseline {baseline:.0f} tasks/s, with webhooks {webhooks:.0f} tasks/s"
            f" (ratio {webhooks / baseline:.3f}); deliveries/s {sum(rates) / len(rates):.0f};"
            f" worst backlog {max(lags):.2f} s"
        )
        # Each round's own ratio (its two turns, next to each other in time), and how far
        # their mean may be from the truth: a sitting's rounds spread widely on this host.
        ratios = [r["baseline"] / r["webhooks"] for r in took_by_round]
        spread = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
        print(
            "rounds: "
            + " ".join(f"{r:.2f}" for r in ratios)
            + f"; mean {statistics.mean(ratios):.3f} +- {spread:.3f} (standard error)"
        )
        if delivered:
            # Per delivery: what the webhook turns used beyond the baseline turns.
            per = {
                k: (cpu["webhooks"][k] - cpu["baseline"][k]) / delivered * 1e6
                for k in (
                    "deliverer",
                    "pg-deliverer",
                    "pg-worker",
                    "pg-autovacuum",
                    "pg-bench",
                    "worker",
                    "machine",
                )
            }
            print(
                f"cpu per delivery (us, webhook turns minus baseline turns): deliverer"
                f" {per['deliverer']:.0f}, its postgres backends {per['pg-deliverer']:.0f},"
                f" the worker's postgres backends (the trigger) {per['pg-worker']:.0f},"
                f" autovacuum {per['pg-autovacuum']:.0f}, the bench's backends"
                f" {per['pg-bench']:.0f},"
                f" worker {per['worker']:.0f}, receiver"
                f" {cpu['webhooks']['receiver'] / delivered * 1e6:.0f};"
                f" whole machine {per['machine']:.0f} (other sessions included);"
                f" worker cpu per task (ms): baseline {cpu['baseline']['worker'] / n * 1e3:.2f},"
                f" webhooks {cpu['webhooks']['worker'] / n * 1e3:.2f}"
            )
        # Where a slower turn's time went: CPU is not all of it. The task path (the worker's
        # processes and its Postgres backends) also waits on run queues for a core.
        print(
            "per task (ms), cpu / run-queue wait: "
            + "; ".join(
                f"{v}: worker {cpu[v]['worker'] / n * 1e3:.2f}"
                f" / {cpu[v]['worker-waited'] / n * 1e3:.2f},"
                f" its postgres {cpu[v]['pg-worker'] / n * 1e3:.2f}"
                f" / {cpu[v]['pg-worker-waited'] / n * 1e3:.2f},"
                f" elapsed {totals[v] / n * 1e3:.2f}"
                for v in variants
            )
        )
        if args.trigger_turns:
            events = trigger_events
            trigger = n / totals["trigger"]
            more = {
                k: (cpu["trigger"][k] - cpu["baseline"][k]) / events * 1e6
                for k in ("pg-worker", "pg-autovacuum", "machine")
            }
            print(
                f"trigger alone (deliverer stopped): {trigger:.0f} tasks/s"
                f" (ratio {trigger / baseline:.3f}); per event queued: the worker's postgres"
                f" backends {more['pg-worker']:.0f} us more"
                f" ({more['pg-worker'] / subscriptions:.0f} per delivery), autovacuum"
                f" {more['pg-autovacuum']:.0f} us, whole machine {more['machine']:.0f} us"
            )
        labels = {
            "niced": f"the deliverer at nice {args.niced_turns}",
            "burner": f"beside a burner of {args.burner_turns} cores under SCHED_IDLE",
            "idle": "the deliverer under SCHED_IDLE",
        }
        for variant, label in labels.items():
            if variant in variants:
                rate = n / totals[variant]
                ratios = [r["baseline"] / r[variant] for r in took_by_round]
                print(
                    f"{label}: {rate:.0f} tasks/s (ratio {rate / baseline:.3f}); rounds "
                    + " ".join(f"{r:.2f}" for r in ratios)
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
