"""The purge against what races it: a pin committed mid-statement, and a second sweeper's purge."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from cli.base import ledger
from config.settings import Settings
from shared import db, store
from shared.retention import Retention
from tests.integration.test_retention import finished
from workers.retention import Purger

pytestmark = pytest.mark.integration


def _exists(database_url: str, table: str, column: str, ids: list[uuid.UUID]) -> int:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE {column} = ANY(%s)", (ids,))  # noqa: S608
        return int(cur.fetchone()[0])


def test_a_task_pinned_while_the_purge_runs_is_kept_with_its_rows(backends, clean_db):
    url = backends.database_url
    doomed = finished(url, count=20, ago=120)
    racing = doomed[7]
    pinner = db.connect(url)
    with pinner.cursor() as cur:  # the pin's transaction holds the row while the purge runs
        cur.execute("UPDATE tasks SET pinned = true WHERE id = %s", (racing,))
    result: list[int] = []

    def purge() -> None:
        with ledger(url) as conn:
            classes = Retention(default=60.0, failed=60.0).classes(
                store.definition_retentions(conn)
            )
            result.append(store.purge_expired_tasks(conn, classes, 100, 3600.0).deleted)

    purger = threading.Thread(target=purge)
    purger.start()
    time.sleep(0.5)
    assert purger.is_alive(), "the DELETE waits for the pin's row lock"
    pinner.commit()
    pinner.close()
    purger.join(10)
    assert result == [19]
    # The pinned task keeps its attempt, log line and idempotency record; the others lost all.
    others = [t for t in doomed if t != racing]
    for table, column in [
        ("tasks", "id"),
        ("task_attempts", "task_id"),
        ("task_logs", "task_id"),
        ("idempotency_keys", "task_id"),
    ]:
        assert _exists(url, table, column, [racing]) == 1, table
        assert _exists(url, table, column, others) == 0, table


def test_one_sweeper_purges_at_a_time(backends, clean_db, settings: Settings):
    url = backends.database_url
    ids = finished(url, count=30, ago=120)
    fast = settings.with_overrides(retention="60s", retention_failed="60s")
    database = db.Database(url, max_connections=4)
    try:
        first, second = Purger(fast, database), Purger(fast, database)
        holder = db.connect(url)
        holder.autocommit = True
        assert store.try_lock_purge(holder)  # the first sweeper's purge, in progress
        assert second.purge(threading.Event()) == 0
        assert _exists(url, "tasks", "id", ids) == 30, "the second left the backlog alone"
        store.unlock_purge(holder)
        holder.close()
        first.batch = 7  # full batches: the purge goes on until one is not full
        assert first.purge(threading.Event()) == 30
        assert _exists(url, "tasks", "id", ids) == 0
        # The lock went back with the session: the other sweeper's next round takes it.
        assert second.purge(threading.Event()) == 0
        check = db.connect(url)
        check.autocommit = True
        assert store.try_lock_purge(check)
        check.close()
    finally:
        database.close()


def _other_definition(database_url: str) -> str:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM task_definitions WHERE id <> 'echo' ORDER BY id LIMIT 1")
        return str(cur.fetchone()[0])


def test_a_batch_takes_the_oldest_expired_tasks_of_every_class_first(backends, clean_db):
    url = backends.database_url
    other = _other_definition(url)
    oldest = finished(url, count=4, ago=1000) + finished(url, count=3, ago=900, definition=other)
    older = finished(url, count=3, status="CANCELLED", ago=800)
    newer = finished(url, count=5, ago=300, definition=other) + finished(url, count=5, ago=120)
    with ledger(url) as conn:
        classes = list(Retention(60.0, 60.0).classes(store.definition_retentions(conn)))
        first = store.purge_expired_tasks(conn, classes, 10, 3600.0)
        conn.commit()
        assert (first.deleted, first.found, first.covered) == (10, 20, True)
        assert _exists(url, "tasks", "id", oldest + older) == 0
        assert _exists(url, "tasks", "id", newer) == 10
        # A span short of the next task: the batch takes what lies under it, and says that
        # its horizon fell short of the cutoffs (the purger widens it and goes on).
        short = store.purge_expired_tasks(conn, classes, 10, 60.0)
        conn.commit()
        assert (short.deleted, short.found, short.covered) == (5, 5, False)
        assert _exists(url, "tasks", "id", newer[:5]) == 0
        last = store.purge_expired_tasks(conn, classes, 10, 60.0)
        conn.commit()
        assert (last.deleted, last.found, last.covered) == (5, 5, False)
        done = store.purge_expired_tasks(conn, classes, 10, 60.0)
        conn.commit()
        assert (done.deleted, done.found, done.covered) == (0, 0, True)


def test_a_backlog_spread_over_hours_and_classes_is_purged_whatever_the_span(
    backends, clean_db, settings: Settings
):
    url = backends.database_url
    other = _other_definition(url)
    doomed = (
        finished(url, count=10, ago=120)
        + finished(url, count=10, status="CANCELLED", ago=2000, definition=other)
        + finished(url, count=10, status="FAILED", ago=7200)
        + finished(url, count=10, ago=40_000, definition=other)
    )
    kept = (
        finished(url, count=5, status="FAILED", ago=600)  # failures are kept an hour
        + finished(url, count=5, ago=5000, pinned=True)
        + finished(url, count=5, status="RUNNING")
        + finished(url, count=5, ago=10)  # not expired yet
    )
    fast = settings.with_overrides(retention="60s", retention_failed="1h", purge_rate=100_000.0)
    database = db.Database(url, max_connections=1)
    try:
        purger = Purger(fast, database)
        purger.batch, purger.span = 7, 0.001  # many short batches; the span must grow
        assert purger.purge(threading.Event()) == 40
        assert _exists(url, "tasks", "id", doomed) == 0
        assert _exists(url, "task_logs", "task_id", doomed) == 0
        assert _exists(url, "tasks", "id", kept) == 20
        assert _exists(url, "idempotency_keys", "task_id", kept) == 20
        assert purger.purge(threading.Event()) == 0
    finally:
        database.close()
