"""The per-process attempt watcher and the one-statement claim and finish, on a real Postgres."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from config.settings import Settings
from shared import db, store
from shared.broker import Broker
from shared.db import Database
from shared.status import Status
from shared.store import _prepared as prepared
from shared.store import attempts
from workers.context import AttemptContext
from workers.executor import HOST, Runtime

from ..helpers import task_row, wait_for


def _new_task(database: Database) -> uuid.UUID:
    row = task_row(published=False)
    with database.connection() as conn:
        store.insert_tasks(conn, [row])
    return row.id


def _claim(database: Database, task_id: uuid.UUID) -> store.ClaimedTask:
    with database.connection(autocommit=True) as conn:
        task = store.claim_task(conn, task_id, HOST, os.getpid(), 30)
    assert task is not None
    return task


def _cancel(database: Database, task_id: uuid.UUID, force: bool) -> None:
    with database.connection() as conn:
        store.cancel_task(conn, task_id, owner=None, reason="test", by="alice", force=force)


@pytest.fixture
def database(settings: Settings, clean_db: None) -> Iterator[Database]:
    database = Database(settings.database_url, max_connections=4)
    yield database
    database.close()


@pytest.fixture
def interrupts() -> Iterator[list[int]]:
    """Record SIGUSR1 (the forced-cancel interrupt) instead of letting it raise."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: seen.append(signum))
    yield seen
    signal.signal(signal.SIGUSR1, previous)


def _watcher_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "attempt-watcher")


def test_one_thread_watches_consecutive_attempts(
    database: Database, settings: Settings, interrupts: list[int]
) -> None:
    contexts = []
    for _ in range(5):
        task = _claim(database, _new_task(database))
        context = AttemptContext(database, settings, task.id, task.attempts)
        context.start()
        contexts.append(context)
        context.stop()
    assert _watcher_threads() == 1

    # The next attempt is still watched: a cancel reaches it within a poll or two.
    task = _claim(database, _new_task(database))
    context = AttemptContext(database, settings, task.id, task.attempts)
    context.start()
    try:
        _cancel(database, task.id, force=False)
        assert wait_for(context.cancelled, timeout=3)
    finally:
        context.stop()
    assert _watcher_threads() == 1
    assert not any(c.cancelled() for c in contexts)
    assert interrupts == []


def test_a_stopped_attempt_is_never_signalled(
    database: Database, settings: Settings, interrupts: list[int]
) -> None:
    task = _claim(database, _new_task(database))
    context = AttemptContext(database, settings, task.id, task.attempts)
    context.start()
    context.stop()
    _cancel(database, task.id, force=True)
    time.sleep(0.6)  # three polls
    assert not context.cancelled()
    assert interrupts == []

    # A forced cancel of the attempt being watched interrupts at once.
    task = _claim(database, _new_task(database))
    context = AttemptContext(database, settings, task.id, task.attempts)
    context.start()
    try:
        _cancel(database, task.id, force=True)
        assert wait_for(lambda: interrupts, timeout=3) == [signal.SIGUSR1]
        assert context.cancelled()
    finally:
        context.stop()


def _attempt_rows(database_url: str, task_id: uuid.UUID) -> list[dict[str, Any]]:
    conn = db.connect(database_url)
    try:
        with store.dict_cursor(conn) as cur:
            cur.execute(
                "SELECT attempt, status, ended_at IS NOT NULL AS ended FROM task_attempts"
                " WHERE task_id = %s ORDER BY attempt",
                (task_id,),
            )
            return [dict(row) for row in cur.fetchall()]
    finally:
        conn.close()


def test_claim_and_finish_write_task_and_attempt_in_one_statement(
    database: Database, settings: Settings
) -> None:
    task_id = _new_task(database)
    task = _claim(database, task_id)
    assert (task.status, task.attempts) == ("RUNNING", 1)
    assert _attempt_rows(settings.database_url, task_id) == [
        {"attempt": 1, "status": "RUNNING", "ended": False}
    ]
    # Claimed already: a second claim (a duplicate message) changes nothing.
    with database.connection(autocommit=True) as conn:
        assert store.claim_task(conn, task_id, HOST, os.getpid(), 30) is None

    with database.connection(autocommit=True) as conn:
        assert store.finish_attempt(conn, task_id, 1, Status.COMPLETED, output={"ok": 1})
        done = store.get_task(conn, task_id)
    assert done is not None and done.status == "COMPLETED" and done.output == {"ok": 1}
    assert _attempt_rows(settings.database_url, task_id) == [
        {"attempt": 1, "status": "COMPLETED", "ended": True}
    ]


def _prepared_here(conn: Any) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cur.fetchall()}


def test_claim_and_finish_are_prepared_once_per_autocommit_connection(
    database: Database, settings: Settings
) -> None:
    first, second = _new_task(database), _new_task(database)
    conn = db.connect(settings.database_url)
    conn.autocommit = True
    try:
        for task_id in (first, second):
            task = store.claim_task(conn, task_id, HOST, os.getpid(), 30)
            assert task is not None and task.attempts == 1
            assert store.finish_attempt(conn, task_id, 1, Status.COMPLETED, output={"n": 1})
        assert _prepared_here(conn) == {"taskexec_claim", "taskexec_finish"}
    finally:
        conn.close()
    # Inside a transaction the plain statements run: nothing is left prepared behind.
    third = _new_task(database)
    conn = db.connect(settings.database_url)
    try:
        assert store.claim_task(conn, third, HOST, os.getpid(), 30) is not None
        assert store.finish_attempt(conn, third, 1, Status.COMPLETED, output={})
        conn.commit()
        assert _prepared_here(conn) == set()
    finally:
        conn.close()
    with database.connection() as conn:
        for task_id in (first, second, third):
            done = store.get_task(conn, task_id)
            assert done is not None and done.status == "COMPLETED"


def test_a_prepared_statement_whose_plan_turned_slow_is_planned_again(settings: Settings) -> None:
    """A generic plan made while a table was nearly empty scans all of it once it is not (the
    worker's claim did, with autovacuum off): its slow runs get it planned afresh, for the
    table's size, within REPREPARE_AFTER runs. (That a fast plan is kept: the next test.)"""
    # Slow here means 10 ms: a scan of the table below takes several times that, a look-up by
    # its key well under it even on a loaded machine.
    probe = attempts._Prepared(
        "taskexec_test_probe",
        "SELECT b FROM probe WHERE id = %(id)s",
        {"id": "uuid"},
        slow_seconds=0.01,
    )
    conn = db.connect(settings.database_url)
    conn.autocommit = True

    def plan() -> str:
        with conn.cursor() as cur:
            cur.execute(f"EXPLAIN EXECUTE taskexec_test_probe ('{uuid.uuid4()}')")
            return " ".join(row[0] for row in cur.fetchall())

    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE probe (id uuid PRIMARY KEY, a int, b int)")
            cur.execute("CREATE INDEX ON probe (a, id)")
            cur.execute("ANALYZE probe")  # statistics that say: empty
            for _ in range(10):
                probe.run(cur, {"id": uuid.uuid4()})
            state = attempts._Prepared.done[conn]["taskexec_test_probe"]
            assert state.prepares == 1
            # Big enough that a scan of it is slow on any machine (tens of milliseconds).
            cur.execute(
                "INSERT INTO probe SELECT gen_random_uuid(), n % 100, n"
                " FROM generate_series(1, 800000) n"
            )
            assert "Seq Scan" in plan()  # the generic plan made on the empty table: stale
            for _ in range(prepared.REPREPARE_AFTER - state.since):
                probe.run(cur, {"id": uuid.uuid4()})
            assert state.slow and state.prepares == 1  # marked; prepared again at the next run
            probe.run(cur, {"id": uuid.uuid4()})
            assert state.prepares == 2
            for _ in range(10):  # past the five custom plans: the generic one is made now
                probe.run(cur, {"id": uuid.uuid4()})
        assert "Index Scan using probe_pkey" in plan()
    finally:
        conn.close()


def test_a_prepared_statement_slow_by_nature_is_not_planned_again_below_its_bound(
    settings: Settings,
) -> None:
    """A statement whose runs take longer than SLOW_RUN_SECONDS by their nature (the fan-out
    writes its deliveries) is given a higher `slow_seconds`: runs under it keep the plan,
    while the same runs under the default bound mark it for planning again."""
    sleep = "SELECT pg_sleep(0.003)"  # 3 ms a run: over SLOW_RUN_SECONDS, far under 1 s
    assert prepared.SLOW_RUN_SECONDS < 0.003
    patient = prepared.Prepared("taskexec_test_patient", sleep, {}, slow_seconds=1.0)
    default = prepared.Prepared("taskexec_test_default", sleep, {})
    conn = db.connect(settings.database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for _ in range(prepared.REPREPARE_AFTER + 1):
                patient.run(cur, {})
                default.run(cur, {})
        states = prepared.Prepared.done[conn]
        assert not states["taskexec_test_patient"].slow
        assert states["taskexec_test_patient"].prepares == 1
        assert states["taskexec_test_default"].prepares == 2  # prepared again after 64 runs
    finally:
        conn.close()


def test_a_prepared_statement_gone_from_the_server_falls_back_to_plain_sql(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As behind PgBouncer in transaction mode, where the next statement may reach another
    server connection: the claim still works, and the process stops preparing."""
    monkeypatch.setattr(attempts._Prepared, "plain_only", False)  # restored afterwards
    first, second = _new_task(database), _new_task(database)
    conn = db.connect(settings.database_url)
    conn.autocommit = True
    try:
        assert store.claim_task(conn, first, HOST, os.getpid(), 30) is not None
        with conn.cursor() as cur:
            cur.execute("DEALLOCATE ALL")  # what another server connection would look like
        task = store.claim_task(conn, second, HOST, os.getpid(), 30)
        assert task is not None and (task.status, task.attempts) == ("RUNNING", 1)
        assert attempts._Prepared.plain_only
        assert store.finish_attempt(conn, second, 1, Status.COMPLETED, output={"n": 2})
        assert _prepared_here(conn) == set()
    finally:
        conn.close()
    assert _attempt_rows(settings.database_url, second) == [
        {"attempt": 1, "status": "COMPLETED", "ended": True}
    ]


def test_finish_of_an_attempt_that_lost_its_task_closes_it_by_what_became_of_it(
    database: Database, settings: Settings
) -> None:
    cancelled = _new_task(database)
    _claim(database, cancelled)
    _cancel(database, cancelled, force=False)
    with database.connection(autocommit=True) as conn:
        assert not store.finish_attempt(conn, cancelled, 1, Status.COMPLETED, output={})
        task = store.get_task(conn, cancelled)
    assert task is not None and task.status == "CANCELLED" and task.output is None
    assert _attempt_rows(settings.database_url, cancelled) == [
        {"attempt": 1, "status": "CANCELLED", "ended": True}
    ]

    # Superseded: the task ran on under a later attempt (its lease was taken over).
    superseded = _new_task(database)
    _claim(database, superseded)
    with database.connection(autocommit=True) as conn:
        conn.cursor().execute("UPDATE tasks SET status = 'PENDING' WHERE id = %s", (superseded,))
    _claim(database, superseded)  # attempt 2
    with database.connection(autocommit=True) as conn:
        assert not store.finish_attempt(conn, superseded, 1, Status.COMPLETED, output={})
    rows = _attempt_rows(settings.database_url, superseded)
    assert rows == [
        {"attempt": 1, "status": "SUPERSEDED", "ended": True},
        {"attempt": 2, "status": "RUNNING", "ended": False},
    ]


def test_finish_that_waited_for_a_concurrent_cancel_closes_the_attempt_cancelled(
    database: Database, settings: Settings
) -> None:
    task_id = _new_task(database)
    _claim(database, task_id)
    canceller = db.connect(settings.database_url)
    try:
        # The cancel holds the task's row lock while the worker's finish arrives.
        store.cancel_task(canceller, task_id, owner=None, reason="race", by="alice", force=False)
        recorded: list[bool] = []

        def finish() -> None:
            with database.connection(autocommit=True) as conn:
                recorded.append(store.finish_attempt(conn, task_id, 1, Status.COMPLETED))

        worker = threading.Thread(target=finish)
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive()  # waiting for the cancel's lock
        canceller.commit()
        worker.join(10)
    finally:
        canceller.close()
    assert recorded == [False]
    assert _attempt_rows(settings.database_url, task_id) == [
        {"attempt": 1, "status": "CANCELLED", "ended": True}
    ]


def test_only_the_workers_claims_commit_without_waiting_for_the_disk(settings: Settings) -> None:
    runtime = Runtime(settings, Broker(settings))
    try:
        with runtime.claims.connection(autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone() == ("off",)
        with runtime.db.connection() as conn, conn.cursor() as cur:
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone() == ("on",)
    finally:
        runtime.claims.close()
        runtime.db.close()
