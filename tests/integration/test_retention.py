"""Retention against real sweepers: expired tasks go with their rows; pinned, active ones stay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cli.base import ledger
from shared import store
from tests.helpers import Processes, get, submit, task_row, wait_for, wait_for_status

pytestmark = pytest.mark.integration
#: Completed tasks expire after 2 s, failures are kept an hour, and a purge round runs twice a
#: second: anything expired is gone within a few seconds.
FAST_PURGE = {
    "TASKEXEC_RETENTION": "2s",
    "TASKEXEC_RETENTION_FAILED": "1h",
    "TASKEXEC_PURGE_INTERVAL": "0.5",
}


@pytest.fixture
def database_url(processes: Processes) -> str:
    return processes.settings.database_url


@pytest.fixture
def other_definition(database_url: str) -> Iterator[str]:
    """A published definition other than echo whose `retention` a test may set; restored after."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM task_definitions WHERE id <> 'echo' ORDER BY id LIMIT 1")
        definition = str(cur.fetchone()[0])
    yield definition
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE task_definitions SET retention = NULL WHERE id = %s", (definition,))


def finished(
    database_url: str,
    count: int = 1,
    status: str = "COMPLETED",
    ago: float = 10.0,
    definition: str = "echo",
    pinned: bool = False,
) -> list[uuid.UUID]:
    """Insert tasks that ended `ago` seconds ago in `status`, each with an attempt, a log line
    and an idempotency record."""
    rows = [task_row(task_definition_id=definition) for _ in range(count)]
    ids = [r.id for r in rows]
    end_time = None if status in ("PENDING", "RUNNING", "RETRYING") else ago
    with ledger(database_url) as conn:
        store.insert_tasks(conn, rows)
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET status = %s, pinned = %s, attempts = 1,"
                " end_time = CASE WHEN %s::float8 IS NULL THEN NULL"
                "   ELSE now() - make_interval(secs => %s::float8) END"
                " WHERE id = ANY(%s)",
                (status, pinned, end_time, end_time, ids),
            )
            cur.execute(
                "INSERT INTO task_attempts (task_id, attempt, status)"
                " SELECT unnest(%s::uuid[]), 1, %s",
                (ids, status),
            )
            cur.execute(
                "INSERT INTO task_logs (task_id, attempt, level, message)"
                " SELECT unnest(%s::uuid[]), 1, 'INFO', 'hello'",
                (ids,),
            )
            cur.execute(
                "INSERT INTO idempotency_keys (owner, key, request_hash, task_id, expires_at)"
                " SELECT 'alice', t::text, 'h', t, now() + interval '1 day'"
                " FROM unnest(%s::uuid[]) t",
                (ids,),
            )
    return ids


def remaining(database_url: str, ids: list[uuid.UUID]) -> dict[str, int]:
    """How many of `ids` each table still holds."""
    counts: dict[str, int] = {}
    with ledger(database_url) as conn, conn.cursor() as cur:
        for table, column in (
            ("tasks", "id"),
            ("task_attempts", "task_id"),
            ("task_logs", "task_id"),
            ("idempotency_keys", "task_id"),
        ):
            cur.execute(f"SELECT count(*) FROM {table} WHERE {column} = ANY(%s)", (ids,))
            counts[table] = int(cur.fetchone()[0])
    return counts


def gone(database_url: str, ids: list[uuid.UUID]) -> bool:
    return not any(remaining(database_url, ids).values())


def test_expired_tasks_go_with_their_rows_and_the_rest_stay(
    processes: Processes, database_url: str, other_definition: str
) -> None:
    expired = finished(database_url, 3)
    cancelled = finished(database_url, 1, status="CANCELLED")
    pinned = finished(database_url, 1, pinned=True)
    running = finished(database_url, 1, status="RUNNING")
    pending = finished(database_url, 1, status="PENDING")
    failed = finished(database_url, 1, status="FAILED")  # kept an hour (RETENTION_FAILED)
    timed_out = finished(database_url, 1, status="TIMED_OUT")
    fresh = finished(database_url, 1, ago=0)  # ends now: expires in 2 s
    with ledger(database_url) as conn, conn.cursor() as cur:
        # The definition's own retention wins over both settings: its failures go after 1 s.
        cur.execute(
            "UPDATE task_definitions SET retention = '1s' WHERE id = %s", (other_definition,)
        )
    overridden = finished(database_url, 1, status="FAILED", definition=other_definition)
    processes.sweeper(extra_env=FAST_PURGE)

    wait_for(lambda: gone(database_url, expired + cancelled + overridden), timeout=20)
    wait_for(lambda: gone(database_url, fresh), timeout=10)
    for kept in (pinned, running, pending, failed, timed_out):
        assert remaining(database_url, kept) == {
            "tasks": 1,
            "task_attempts": 1,
            "task_logs": 1,
            "idempotency_keys": 1,
        }


def test_a_completed_task_disappears_from_the_api(
    processes: Processes, client: Any, auth: Any
) -> None:
    headers = auth.key()
    processes.worker()
    processes.sweeper(extra_env=FAST_PURGE)
    task_id = submit(client, headers, "echo", {"message": "bye"})
    done = wait_for_status(client, headers, task_id, {"COMPLETED"})
    assert done["expiresAt"] is not None and done["pinned"] is False
    before = client.get("/api/v1/tasks", headers=headers).get_json()["pagination"]["totalItems"]
    assert before == 1
    wait_for(
        lambda: client.get(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 404,
        timeout=20,
    )
    after = client.get("/api/v1/tasks", headers=headers).get_json()
    assert after["pagination"]["totalItems"] == 0 and after["items"] == []
    assert get(client, headers, task_id)["error"]["code"] == "NOT_FOUND"


def test_two_sweepers_purge_a_backlog_together(processes: Processes, database_url: str) -> None:
    expired = finished(database_url, 3000)
    kept = finished(database_url, 20, pinned=True)
    first = processes.sweeper(extra_env=FAST_PURGE)
    second = processes.sweeper(extra_env=FAST_PURGE)
    wait_for(lambda: gone(database_url, expired), timeout=60)
    assert remaining(database_url, kept)["tasks"] == 20
    for proc in (first, second):
        assert proc.poll() is None
        log = open(proc.log_path).read()  # type: ignore[attr-defined]
        assert "purge failed" not in log and "Traceback" not in log, log[-2000:]
