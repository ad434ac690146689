"""Redelivery by filter: `POST /api/v1/webhooks/{id}/deliveries/redeliver` (after an outage)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli.base import ledger
from shared import store
from tests.api.test_openapi import Conformance
from tests.api.test_webhooks_log import URL, _rows_read, insert_subscription, log, subscribe

PATH = f"{URL}/{{webhook_id}}/deliveries/redeliver"
#: The seeded log's first delivery's time; the others follow a minute apart.
START = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    return dict(client.get("/api/v1/openapi.json").get_json())


def seed(database_url: str, webhook_id: str, statuses: str) -> list[str]:
    """One delivery per letter (F FAILED, D DELIVERED, P PENDING, due in an hour), a minute
    apart from START, each of an event of its own; return their ids, oldest first."""
    names = {"F": "FAILED", "D": "DELIVERED", "P": "PENDING"}
    ids = []
    with ledger(database_url) as conn, conn.cursor() as cur:
        for n, letter in enumerate(statuses):
            event, delivery = uuid.uuid4(), uuid.uuid4()
            at = START + timedelta(minutes=n)
            cur.execute(
                "INSERT INTO webhook_events (id, type, task_id, created_at)"
                " VALUES (%s, 'task.completed', %s, %s)",
                (event, uuid.uuid4(), at),
            )
            cur.execute(
                "INSERT INTO webhook_deliveries (id, event_id, webhook_id, type, task_id, status,"
                " attempts, next_attempt_at, error, created_at)"
                " VALUES (%s, %s, %s, 'task.completed', NULL, %s, 30,"
                " now() + interval '1 hour', 'HTTP 503', %s)",
                (delivery, event, webhook_id, names[letter], at),
            )
            ids.append(str(delivery))
    return ids


def statuses(database_url: str, ids: list[str]) -> str:
    """The deliveries' statuses as seed's letters, in the order of `ids`."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id::text, status, next_attempt_at <= now(), retry_from IS NOT NULL"
            " FROM webhook_deliveries WHERE id = ANY(%s::uuid[])",
            (ids,),
        )
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    letters = []
    for i in ids:
        status, due, restarted = rows[i]
        if status == "PENDING" and due and restarted:
            letters.append("R")  # redelivered: PENDING, due now, a fresh retry period
        else:
            letters.append({"FAILED": "F", "DELIVERED": "D", "PENDING": "P"}[status])
    return "".join(letters)


def redeliver(client: Any, headers: dict[str, str], hook: str, **body: Any) -> Any:
    return client.post(f"{URL}/{hook}/deliveries/redeliver", json=body, headers=headers)


def test_failed_deliveries_are_redelivered_oldest_first_a_batch_at_a_time(
    client, auth, backends, spec
):
    conforms = Conformance(spec)
    headers = auth.key(["webhooks:read", "webhooks:write"])
    hook = subscribe(client, headers)
    other = subscribe(client, headers)
    ids = seed(backends.database_url, hook, "FDFFPFDF")
    theirs = seed(backends.database_url, other, "FF")
    # By default the FAILED ones, oldest first, at most `limit`; the cursor goes on after them.
    first = conforms("POST", PATH, redeliver(client, headers, hook, limit=3))
    assert first["redelivered"] == 3 and first["nextCursor"]
    assert statuses(backends.database_url, ids) == "RDRRPFDF"
    rest = redeliver(client, headers, hook, limit=3, cursor=first["nextCursor"])
    assert rest.status_code == 202, rest.get_json()
    assert conforms("POST", PATH, rest) == {"redelivered": 2, "nextCursor": None}
    assert statuses(backends.database_url, ids) == "RDRRPRDR"
    # Nothing left: none, no cursor. Another subscription's are untouched.
    again = conforms("POST", PATH, redeliver(client, headers, hook))
    assert again == {"redelivered": 0, "nextCursor": None}
    assert statuses(backends.database_url, theirs) == "FF"
    # The log shows them PENDING, attempts counting on (the event, so its webhook-id, kept).
    pending = log(client, headers, hook, "status=PENDING&limit=100")["items"]
    assert {d["id"] for d in pending} == {ids[i] for i in (0, 2, 3, 4, 5, 7)}
    assert {d["attempts"] for d in pending} == {30}
    # A failed one's last error goes with its status; a pending one's stays until its attempt.
    assert {d["id"]: d["error"] for d in pending if d["error"]} == {ids[4]: "HTTP 503"}


def test_a_redelivery_by_filter_takes_the_filter_and_a_time_window(client, auth, backends):
    headers = auth.key(["webhooks:read", "webhooks:write"])
    hook = subscribe(client, headers)
    ids = seed(backends.database_url, hook, "FFFFDDPP")
    window = {
        "createdAfter": (START + timedelta(minutes=1)).isoformat(),
        "createdBefore": (START + timedelta(minutes=3)).isoformat(),
    }
    done = redeliver(client, headers, hook, filter=window)
    assert done.get_json() == {"redelivered": 2, "nextCursor": None}
    assert statuses(backends.database_url, ids) == "FRRFDDPP"
    # DELIVERED: a receiver's replay; with a cursor when the limit is reached.
    replay = redeliver(client, headers, hook, filter={"status": "DELIVERED"}, limit=1)
    assert replay.get_json()["redelivered"] == 1
    cursor = replay.get_json()["nextCursor"]
    assert statuses(backends.database_url, ids) == "FRRFRDPP"
    # Redelivered rows are PENDING now: the cursor, not the status, moves the next call on.
    more = redeliver(client, headers, hook, filter={"status": "DELIVERED"}, limit=1, cursor=cursor)
    assert more.get_json()["redelivered"] == 1
    assert statuses(backends.database_url, ids) == "FRRFRRPP"
    # PENDING: retries waiting for their backoff brought forward, due now.
    forward = redeliver(client, headers, hook, filter={"status": "PENDING"}, limit=10_000)
    assert forward.get_json()["redelivered"] == 6  # the two waiting, and the four above
    assert statuses(backends.database_url, ids) == "FRRFRRRR"


def test_a_redelivery_by_task_takes_that_tasks_deliveries(client, auth, backends):
    headers = auth.key(["webhooks:read", "webhooks:write"])
    hook = subscribe(client, headers)
    ids = seed(backends.database_url, hook, "FFF")
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT e.task_id FROM webhook_events e JOIN webhook_deliveries d ON d.event_id = e.id"
            " WHERE d.id = %s",
            (ids[1],),
        )
        (task,) = cur.fetchone()
        cur.execute("UPDATE webhook_deliveries SET task_id = %s WHERE id = %s", (task, ids[1]))
    done = redeliver(client, headers, hook, filter={"taskId": str(task)})
    assert done.get_json()["redelivered"] == 1
    assert statuses(backends.database_url, ids) == "FRF"


def test_a_redelivery_by_filter_refuses_what_it_cannot_do(client, auth, backends, spec):
    conforms = Conformance(spec)
    headers = auth.key(["webhooks:read", "webhooks:write"])
    hook = subscribe(client, headers)
    ids = seed(backends.database_url, hook, "F")
    bad = {
        "filter.status": {"filter": {"status": "LOST"}},
        "filter.createdAfter": {"filter": {"createdAfter": "yesterday"}},
        "filter.taskId": {"filter": {"taskId": "nope"}},
        "filter.webhookId": {"filter": {"webhookId": hook}},
        "limit": {"limit": 10_001},
        "cursor": {"cursor": "not-a-cursor"},
        "until": {"until": "now"},
    }
    for field, body in bad.items():
        refused = conforms("POST", PATH, redeliver(client, headers, hook, **body))
        error = refused["error"]
        assert error["code"] == "VALIDATION_ERROR", (field, error)
        assert (error["details"]["field"], error["details"]["location"]) == (field, "body")
    cursor = conforms("POST", PATH, redeliver(client, headers, hook, cursor="x"))["error"]
    assert cursor["details"] == {
        "field": "cursor",
        "issue": "not a nextCursor from this API",
        "location": "body",
    }
    # Unknown subscription; another owner's (tasks:admin may); read-only keys may not.
    missing = redeliver(client, headers, str(uuid.uuid4()))
    assert conforms("POST", PATH, missing)["error"]["code"] == "NOT_FOUND"
    bob = auth.key(["webhooks:write"], owner="bob")
    assert redeliver(client, bob, hook).status_code == 404
    reader = auth.key(["webhooks:read"])
    assert redeliver(client, reader, hook).status_code == 403
    # A disabled subscription's deliveries would fail unsent: 409 until it is re-enabled.
    client.patch(f"{URL}/{hook}", json={"disabled": True}, headers=headers)
    conflict = conforms("POST", PATH, redeliver(client, headers, hook))
    assert conflict["error"]["code"] == "CONFLICT" and "re-enable" in conflict["error"]["message"]
    assert statuses(backends.database_url, ids) == "F"
    ops = auth.key(["webhooks:write", "tasks:admin"], owner="ops")
    client.patch(f"{URL}/{hook}", json={"disabled": False}, headers=headers)
    assert redeliver(client, ops, hook).get_json()["redelivered"] == 1


def test_failed_deliveries_are_found_without_walking_the_log(backends):
    """A busy log holds millions of DELIVERED rows: the FAILED ones come by their index."""
    from shared.store import deliveries

    url = backends.database_url
    hook = uuid.uuid4()
    with ledger(url) as conn, conn.cursor() as cur:
        insert_subscription(cur, hook)
        # 20,000 delivered rows, then 5 failed ones among the newest (a walk from the oldest
        # reads every delivered row first).
        cur.execute(
            "INSERT INTO webhook_deliveries (id, event_id, webhook_id, type, status, created_at)"
            " SELECT gen_random_uuid(), gen_random_uuid(), %s, 'task.completed',"
            " CASE WHEN g <= 5 THEN 'FAILED' ELSE 'DELIVERED' END,"
            " now() - make_interval(secs => g) FROM generate_series(1, 20000) g",
            (hook,),
        )
        cur.execute("ANALYZE webhook_deliveries")
    try:
        with ledger(url) as conn, conn.cursor() as cur:
            sql, params = deliveries._redeliver_statement(
                hook, "FAILED", None, None, None, None, 1000
            )
            cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
            plan = cur.fetchone()[0]
            assert _rows_read(plan) < 100, plan
            conn.rollback()  # EXPLAIN ANALYZE ran the update
            assert store.redeliver_matching(conn, hook, status="FAILED", limit=1000)[0] == 5
    finally:
        with ledger(url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM webhook_deliveries WHERE webhook_id = %s", (hook,))
            cur.execute("DELETE FROM webhooks WHERE id = %s", (hook,))
