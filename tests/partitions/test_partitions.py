"""The guarantees across a partitioned fleet: links cut and healed under steady load.

Each scenario runs two load threads (single and bulk submits, cancels, some forced) against
both API hosts while the nemesis cuts one link, then judges every accepted task against the
final ledger as the fault suite does (tests/reliability): none lost, none contradicting its
history, no task with two results, every repetition visible as an attempt.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import time
from typing import Any

import pytest

from config.celery import celery_settings
from tests.helpers import ROOT
from tests.partitions.fleet import Fleet, connect
from tests.partitions.load import PartitionLedger
from tests.partitions.scenario import (
    Window,
    answered_during,
    isolation,
    link_cut,
    run,
    wait_until,
)
from tests.partitions.verdicts import PartitionVerdict
from tests.reliability.scenario import FACTOR

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_worker_cut_from_postgres_only_while_its_handler_runs(cluster: Fleet) -> None:
    """Cut from Postgres past its lease, the handler is not stopped: its result is refused."""
    strike = link_cut("w1", ("postgres",), under_handler=True, past_handover=True)
    ledger, verdict, windows = run(cluster, "worker-postgres", 1, strike)

    assert verdict.ok, verdict.explain()
    assert len(verdict.base.probes) == len(windows), "no task completed after the heal"
    assert_handed_over_and_refused(cluster, windows[0].task, "w1", verdict)
    assert verdict.rejoin, "the cut worker host never ran an attempt again after the heal"
    assert not cluster.troubled(), "a partition must crash nothing"


def test_worker_cut_from_redis_only(cluster: Fleet) -> None:
    strike = link_cut("w1", ("redis",), under_handler=True)
    ledger, verdict, windows = run(cluster, "worker-redis", 2, strike)

    assert verdict.ok, verdict.explain()
    assert len(verdict.base.probes) == len(windows)
    # Its handler kept its lease through Postgres: its own result is the task's result.
    attempts = attempts_of(cluster, windows[0].task)
    assert [a["status"] for a in attempts] == ["COMPLETED"], attempts
    assert attempts[0]["worker_host"] == cluster.hostname("w1")
    # The worker still reaches Postgres: what it runs keeps its lease, nothing runs twice.
    assert verdict.base.extra_attempts == 0, verdict.explain()
    assert verdict.rejoin, "the cut worker host never ran an attempt again after the heal"
    assert not cluster.troubled(), "a partition must crash nothing"


def test_worker_cut_from_postgres_and_redis(cluster: Fleet) -> None:
    strike = link_cut("w2", ("postgres", "redis"), under_handler=True, past_handover=True)
    ledger, verdict, windows = run(cluster, "worker-both", 3, strike)

    assert verdict.ok, verdict.explain()
    assert_handed_over_and_refused(cluster, windows[0].task, "w2", verdict)
    assert len(verdict.base.probes) == len(windows)
    assert verdict.rejoin, "the cut worker host never ran an attempt again after the heal"
    assert not cluster.troubled(), "a partition must crash nothing"


def test_api_host_cut_from_redis_still_accepts(cluster: Fleet) -> None:
    ledger, verdict, windows = run(cluster, "api-redis", 4, link_cut("api1", ("redis",)))

    assert verdict.ok, verdict.explain()
    # The task waits in Postgres; the sweeper publishes it: a 201 all the same.
    cut = answered_during(ledger, windows, "api1")
    assert cut and set(cut) == {201}, f"api1 answered {dict(cut)} while cut from Redis"
    # One call's timeout finds the cut (a request in flight waits it out: the publish's 3 s at
    # most); from then on the host's Redis calls fail fast (shared/breaker.py), one probe of
    # 0.5 s per cool-off, so no later submit waits on the dead link.
    assert verdict.breaker_opened is not None, "api1's Redis breaker never opened"
    timeout = float(celery_settings(cluster.settings)["broker_connection_timeout"])
    assert verdict.breaker_opened < timeout + 1, verdict.explain()
    assert verdict.slowest_after_open is not None and verdict.slowest_after_open < 1.5, (
        verdict.explain()
    )
    assert verdict.slowest < timeout + 1.5, verdict.explain()
    assert len(verdict.base.probes) == len(windows)
    assert not cluster.troubled(), "a partition must crash nothing"


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
    assert not cluster.troubled(), "a partition must crash nothing"


def test_sweeper_cut_from_postgres(cluster: Fleet) -> None:
    ledger, verdict, windows = run(cluster, "sweeper-postgres", 6, link_cut("s1", ("postgres",)))

    assert verdict.ok, verdict.explain()
    assert sum(n for k, n in verdict.refused.items()) == 0, verdict.explain()
    assert verdict.base.extra_attempts == 0, verdict.explain()
    assert len(verdict.base.probes) == len(windows)
    assert not cluster.troubled(), "a partition must crash nothing"


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
    assert verdict.base.faults == 6 * FACTOR
    assert len(verdict.base.probes) == len(windows)
    assert not cluster.troubled(), "a partition must crash nothing"


def test_worker_partitioned_past_its_lease_while_its_handler_runs(cluster: Fleet) -> None:
    """Off the network entirely for 2.5 leases: the same as a cut from Postgres alone."""
    strike = isolation("w1", hold=cluster.settings.lease_seconds * 2.5, past_handover=True)
    ledger, verdict, windows = run(cluster, "worker-past-lease", 8, strike)

    assert verdict.ok, verdict.explain()
    assert_handed_over_and_refused(cluster, windows[0].task, "w1", verdict)
    assert len(verdict.base.probes) == len(windows)
    assert not cluster.troubled(), "a partition must crash nothing"


#: A client of the ledger in a host's namespace: takes a lock in a transaction, then, told the
#: link is cut, sends its next statement and gives up on it as the service's clients do.
HOLDER = """
import sys
from shared.db import connect
conn = connect(sys.argv[1], connect_timeout=2)
cur = conn.cursor()
cur.execute("SELECT pg_advisory_xact_lock(%s), inet_client_port()", (int(sys.argv[2]),))
print(cur.fetchone()[1], flush=True)
sys.stdin.readline()
try:
    cur.execute("SELECT 1")
    print("answered", flush=True)
except Exception as exc:
    print(type(exc).__name__, flush=True)
"""
#: Seconds from the cut until a vanished client's lock is free again: its server-side session
#: ends at the server's keepalives (2 s idle, 3 probes 1 s apart) or at the first probe after
#: the heal, which the host's kernel answers with a reset.
LOCK_BACK_WITHIN = 12.0


def test_a_session_cut_mid_transaction_gives_its_locks_back(cluster: Fleet) -> None:
    """A client cut off inside a transaction gives up; Postgres must end its session too.

    Its goodbye is lost in the partition and the server, waiting for the next statement,
    would otherwise keep the transaction and its locks for hours (found by the suite: an API
    host cut while in a transaction left a lock that blocked the ledger for good).
    """
    key = 4242
    holder = subprocess.Popen(
        cluster.net.command("w3", [sys.executable, "-c", HOLDER, cluster.settings.database_url,
                                   str(key)]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    postgres = cluster.address_of("postgres")
    try:
        port = int(holder.stdout.readline())
        # Cut while the server waits for the next statement, with nothing of its own in flight
        # (the lock's reply acknowledged): its kernel has nothing to retransmit, so nothing
        # finds the client gone after the heal but the server's keepalives.
        wait_until(lambda: unacknowledged(cluster, port) == 0, 10)
        cut = time.monotonic()
        cluster.net.cut("w3", postgres)
        holder.stdin.write("\n")
        holder.stdin.flush()
        gave_up = holder.stdout.readline().strip()
        assert gave_up == "OperationalError", f"the cut client's statement ended {gave_up!r}"
        cluster.net.heal("w3", postgres)
        with contextlib.closing(connect(cluster.settings.database_url)) as conn:
            cur = conn.cursor()
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                free = cur.fetchone()
                if (free and free[0]) or time.monotonic() - cut > LOCK_BACK_WITHIN:
                    break
                time.sleep(0.2)
            took = time.monotonic() - cut
            lingering = cluster.lingering(cur, since=time.time())
            cur.execute("SELECT pg_advisory_unlock_all()")
        assert free and free[0], f"the lock was still held {took:.1f}s after the cut: {lingering}"
    finally:
        cluster.net.heal_all()
        holder.kill()
        holder.wait(10)


def unacknowledged(fleet: Fleet, client_port: int) -> int | None:
    """Bytes Postgres sent a client (by its port) that it has not acknowledged yet."""
    shown = subprocess.run(
        ["ip", "netns", "exec", fleet.net.hosts["data"].netns,
         "ss", "-Htn", "state", "established", f"( dport = :{client_port} )"],
        capture_output=True, text=True, timeout=30,
    ).stdout.split()  # fmt: skip
    return int(shown[1]) if len(shown) > 1 else None


def assert_handed_over_and_refused(
    fleet: Fleet, task_id: str, host: str, verdict: PartitionVerdict
) -> None:
    """The cut host's attempt was given away at its lease and its late result refused."""
    attempts = attempts_of(fleet, task_id)
    first, last = attempts[0], attempts[-1]
    cut_off = fleet.hostname(host)
    assert first["worker_host"] == cut_off, attempts
    # The sweeper gave the lease away: the first attempt was closed as a lost worker's...
    assert first["status"] != "COMPLETED" and first["error"]["kind"] == "WORKER_LOST", attempts
    # ...and another host ran the task again, whose result is the task's only result.
    assert last["status"] == "COMPLETED" and last["worker_host"] != cut_off, attempts
    assert verdict.results == 0
    # The first handler was not stopped: it finished, and once healed its result was refused.
    assert verdict.superseded >= 1, verdict.explain()


def attempts_of(fleet: Fleet, task_id: str) -> list[dict[str, Any]]:
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
