"""The guarantees across a partitioned fleet: links cut and healed under steady load.

Each scenario runs two load threads (single and bulk submits, cancels, some forced) against
both API hosts while the nemesis cuts one link, then judges every accepted task against the
final ledger as the fault suite does (tests/reliability): none lost, none contradicting its
history, no task with two results, every repetition visible as an attempt.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
import uuid

import pytest

from tests.partitions.fleet import WORKER_HOSTS, Fleet, connect
from tests.partitions.load import PartitionLedger
from tests.partitions.scenario import (
    Window,
    answered_during,
    isolation,
    link_cut,
    run,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def all_up(fleet: Fleet) -> list[str]:
    """Services that died or were restarted: a partition must crash nothing."""
    return [f"{s.role}@{s.host}" for s in fleet.services if not s.running() or s.starts > 1]


def test_worker_cut_from_postgres_only(cluster: Fleet) -> None:
    ledger, verdict, windows = run(cluster, "worker-postgres", 1, link_cut("w1", ("postgres",)))

    assert verdict.ok, verdict.explain()
    assert len(verdict.base.probes) == len(windows), "no task completed after the heal"
    assert verdict.rejoin, "the cut worker host never ran an attempt again after the heal"
    assert not all_up(cluster)


def test_worker_cut_from_redis_only(cluster: Fleet) -> None:
    ledger, verdict, windows = run(cluster, "worker-redis", 2, link_cut("w1", ("redis",)))

    assert verdict.ok, verdict.explain()
    assert len(verdict.base.probes) == len(windows)
    # The worker still reaches Postgres: what it runs keeps its lease, nothing runs twice.
    assert verdict.base.extra_attempts == 0, verdict.explain()
    assert verdict.rejoin, "the cut worker host never ran an attempt again after the heal"
    assert not all_up(cluster)


def test_worker_cut_from_postgres_and_redis(cluster: Fleet) -> None:
    strike = link_cut("w2", ("postgres", "redis"))
    ledger, verdict, windows = run(cluster, "worker-both", 3, strike)

    assert verdict.ok, verdict.explain()
    assert len(verdict.base.probes) == len(windows)
    assert verdict.rejoin, "the cut worker host never ran an attempt again after the heal"
    assert not all_up(cluster)


def test_api_host_cut_from_redis_still_accepts(cluster: Fleet) -> None:
    ledger, verdict, windows = run(cluster, "api-redis", 4, link_cut("api1", ("redis",)))

    assert verdict.ok, verdict.explain()
    # The task waits in Postgres; the sweeper publishes it: a 201 all the same.
    cut = answered_during(ledger, windows, "api1")
    assert cut and set(cut) == {201}, f"api1 answered {dict(cut)} while cut from Redis"
    assert len(verdict.base.probes) == len(windows)
    assert not all_up(cluster)


def test_api_host_cut_from_postgres_answers_503_and_the_other_serves(cluster: Fleet) -> None:
    strike = link_cut("api1", ("postgres",), hold=10.0)  # longer than the bound below
    ledger, verdict, windows = run(cluster, "api-postgres", 5, strike)

    assert verdict.ok, verdict.explain()
    cut = answered_during(ledger, windows, "api1")
    assert cut[503] > 0 and set(cut) <= {201, 503}, f"api1 answered {dict(cut)} while cut"
    assert set(answered_during(ledger, windows, "api2")) == {201}
    # Refused promptly, not after the partition: a dead link is found by its TCP timeouts.
    bound = 3 * cluster.settings.db_connect_timeout + 1
    assert verdict.slowest < bound, f"a submit took {verdict.slowest:.1f}s during the cut"
    assert not all_up(cluster)


def test_sweeper_cut_from_postgres(cluster: Fleet) -> None:
    ledger, verdict, windows = run(cluster, "sweeper-postgres", 6, link_cut("s1", ("postgres",)))

    assert verdict.ok, verdict.explain()
    assert sum(n for k, n in verdict.refused.items()) == 0, verdict.explain()
    assert verdict.base.extra_attempts == 0, verdict.explain()
    assert len(verdict.base.probes) == len(windows)
    assert not all_up(cluster)


def test_one_link_flapping(cluster: Fleet) -> None:
    def flap(ledger: PartitionLedger, rng: random.Random) -> Window:
        fleet, address = ledger.fleet, ledger.fleet.address_of("postgres")
        began = time.monotonic()
        for _ in range(6):
            at = time.time()
            fleet.net.cut("w2", address)
            time.sleep(rng.uniform(0.3, 1.5))
            fleet.net.heal("w2", address)
            ledger.cut("w2-postgres-flap", at, time.time(), ["w2"])
            time.sleep(rng.uniform(0.3, 1.5))
        return Window("w2", began, time.monotonic(), time.time())

    ledger, verdict, windows = run(cluster, "flapping", 7, flap)

    assert verdict.ok, verdict.explain()
    assert verdict.base.faults == 6
    assert len(verdict.base.probes) == len(windows)
    assert not all_up(cluster)


def test_worker_partitioned_past_its_lease_while_its_handler_runs(cluster: Fleet) -> None:
    """The handler is not stopped: it finishes, and its result is refused as superseded."""
    lease = cluster.settings.lease_seconds
    victim: dict[str, str] = {}

    def partition_a_running_handler(ledger: PartitionLedger, rng: random.Random) -> Window:
        task_id = running_long_task_on(ledger, "w1")
        victim["task"] = task_id
        return isolation("w1", hold=lease * 2.5)(ledger, rng)

    ledger, verdict, windows = run(
        cluster, "worker-past-lease", 8, partition_a_running_handler, after=4.0
    )

    assert verdict.ok, verdict.explain()
    attempts = attempts_of(cluster, victim["task"])
    first, last = attempts[0], attempts[-1]
    w1 = cluster.hostname("w1")
    assert first["worker_host"] == w1
    # The sweeper gave the lease away: the first attempt was closed as a lost worker's...
    assert first["status"] != "COMPLETED" and first["error"]["kind"] == "WORKER_LOST", attempts
    # ...and another host ran it again, whose result is the task's only result.
    assert last["status"] == "COMPLETED" and last["worker_host"] != w1, attempts
    assert verdict.results == 0
    # The first handler ran on and finished; once healed, its result was refused.
    log = cluster.service("worker", "w1")
    wait_until(lambda: superseded_in(log.log(), victim["task"]), timeout=30)
    assert not all_up(cluster)


def running_long_task_on(ledger: PartitionLedger, host: str, seconds: float = 4.0) -> str:
    """Submit long sleeps until one runs on `host`; return its id."""
    hostname = ledger.fleet.hostname(host)
    deadline = time.monotonic() + 60
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            ids = [ledger.submit("sleep", {"seconds": seconds}) for _ in range(len(WORKER_HOSTS))]
            started = time.monotonic()
            while time.monotonic() - started < seconds / 2:
                cur.execute(
                    "SELECT id FROM tasks WHERE id = ANY(%s) AND status = 'RUNNING'"
                    " AND worker_host = %s LIMIT 1",
                    ([uuid.UUID(i) for i in ids if i], hostname),
                )
                row = cur.fetchone()
                if row:
                    return str(row[0])
                time.sleep(0.05)
    raise AssertionError(f"no long task ever ran on {host}")


def attempts_of(fleet: Fleet, task_id: str) -> list[dict]:
    with contextlib.closing(connect(fleet.settings.database_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT attempt, status, worker_host, error FROM task_attempts"
            " WHERE task_id = %s ORDER BY attempt",
            (task_id,),
        )
        return [
            {"attempt": a, "status": s, "worker_host": h, "error": e or {}}
            for a, s, h, e in cur.fetchall()
        ]


def superseded_in(log: str, task_id: str) -> bool:
    """Celery's line for the delivery: `Task ... [id] succeeded in ...s: 'superseded'`."""
    return bool(re.search(rf"\[{task_id}\] succeeded in [0-9.]+s: 'superseded'", log))


def wait_until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)
