"""What a status change reaches (the trigger, then the fan-out), the delivery log, redeliver, test.

The events come from real status changes made through the API (complete, cancel) and, for
the ones only a worker makes, the same UPDATE a worker runs; a deliverer's fan-out makes their
deliveries (no deliverer runs here: `log` fans out first); the log is read over HTTP.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cli.base import ledger
from shared import store
from tests.api.test_openapi import Conformance

URL = "/api/v1/webhooks"
RECEIVER = "https://hooks.example.com/taskexec"
ALL = [
    "task.started",
    "task.retrying",
    "task.completed",
    "task.failed",
    "task.timed_out",
    "task.cancelled",
]


def subscribe(client: Any, headers: dict[str, str], **body: Any) -> str:
    response = client.post(URL, json={"url": RECEIVER, **body}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def manual_task(client: Any, headers: dict[str, str], workflow: str | None = None) -> str:
    body: dict[str, Any] = {"taskDefinitionId": "approve-order", "input": {"orderId": "O-1"}}
    if workflow:
        body["workflowInstanceId"] = workflow
    response = client.post("/api/v1/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def complete(client: Any, headers: dict[str, str], task_id: str) -> None:
    done = client.post(
        f"/api/v1/tasks/{task_id}/complete", json={"output": {"approved": True}}, headers=headers
    )
    assert done.status_code == 200, done.get_json()


def cancel(client: Any, headers: dict[str, str], task_id: str) -> None:
    response = client.post(f"/api/v1/tasks/{task_id}/cancel", json={}, headers=headers)
    assert response.status_code == 200, response.get_json()


def fan_out(client: Any) -> None:
    """What a deliverer does first: the events the status changes queued become deliveries."""
    url = client.application.extensions["taskexec"].settings.database_url
    with ledger(url) as conn:
        conn.autocommit = True
        while store.fan_out_events(conn, 500).events:
            pass


def log(client: Any, headers: dict[str, str], webhook_id: str, query: str = "") -> Any:
    fan_out(client)
    response = client.get(f"{URL}/{webhook_id}/deliveries?{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def delivered(client: Any, headers: dict[str, str], webhook_id: str) -> list[tuple[str, str]]:
    """(type, taskId) of every delivery of the subscription, oldest first."""
    items = log(client, headers, webhook_id, "limit=100")["items"]
    return [(d["type"], d["taskId"]) for d in reversed(items)]


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    return dict(client.get("/api/v1/openapi.json").get_json())


def test_a_status_change_reaches_only_the_matching_subscriptions(client, auth):
    alice = auth.key(
        ["tasks:execute", "tasks:complete", "tasks:cancel", "webhooks:read", "webhooks:write"]
    )
    bob = auth.key(
        ["tasks:execute", "tasks:complete", "webhooks:read", "webhooks:write"], owner="bob"
    )
    ops = auth.key(["webhooks:read", "webhooks:write", "tasks:admin"], owner="ops")
    mine = subscribe(client, alice)  # the four terminal events, own tasks
    bobs = subscribe(client, bob)
    everyone = subscribe(client, ops)  # tasks:admin: every owner's tasks
    by_workflow = subscribe(client, alice, filter={"workflowInstanceId": "wf-1"})
    by_definition = subscribe(client, alice, filter={"taskDefinitionId": "echo"})
    by_both = subscribe(
        client, alice, filter={"taskDefinitionId": "approve-order", "workflowInstanceId": "wf-1"}
    )
    cancels = subscribe(client, alice, events=["task.cancelled"])
    starts = subscribe(client, alice, events=["task.started"])
    off = subscribe(client, alice)
    assert client.patch(f"{URL}/{off}", json={"disabled": True}, headers=alice).status_code == 200

    in_workflow = manual_task(client, alice, workflow="wf-1")
    plain = manual_task(client, alice)
    bobs_task = manual_task(client, bob, workflow="wf-1")
    # Submitting (PENDING) is no event.
    assert delivered(client, ops, everyone) == []
    complete(client, alice, in_workflow)
    cancel(client, alice, plain)
    complete(client, bob, bobs_task)

    done, cancelled = "task.completed", "task.cancelled"
    assert delivered(client, alice, mine) == [(done, in_workflow), (cancelled, plain)]
    assert delivered(client, bob, bobs) == [(done, bobs_task)]
    assert delivered(client, ops, everyone) == [
        (done, in_workflow),
        (cancelled, plain),
        (done, bobs_task),
    ]
    # bob's task is in wf-1 too, but alice's subscription sees only her own tasks.
    assert delivered(client, alice, by_workflow) == [(done, in_workflow)]
    assert delivered(client, alice, by_definition) == []
    assert delivered(client, alice, by_both) == [(done, in_workflow)]
    assert delivered(client, alice, cancels) == [(cancelled, plain)]
    assert delivered(client, alice, starts) == []
    assert delivered(client, alice, off) == []


def test_each_status_is_its_event(client, auth, backends):
    headers = auth.key("*")
    hook = subscribe(client, headers, events=ALL)
    task = manual_task(client, headers)
    # The transitions a worker and the sweeper make, as they make them: an UPDATE of status.
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        for status in ("RUNNING", "RETRYING", "RUNNING", "TIMED_OUT"):
            cur.execute("UPDATE tasks SET status = %s WHERE id = %s", (status, task))
            conn.commit()
        cur.execute("UPDATE tasks SET status = 'FAILED' WHERE id = %s", (task,))
        cur.execute("UPDATE tasks SET updated_at = now() WHERE id = %s", (task,))  # no change
    assert [t for t, _ in delivered(client, headers, hook)] == [
        "task.started",
        "task.retrying",
        "task.started",
        "task.timed_out",
        "task.failed",
    ]


def test_a_rolled_back_change_leaves_no_event(client, auth, backends):
    headers = auth.key("*")
    hook = subscribe(client, headers, events=ALL)
    task = manual_task(client, headers)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE tasks SET status = 'RUNNING' WHERE id = %s", (task,))
        conn.rollback()
    assert delivered(client, headers, hook) == []


def test_the_log_filters_pages_and_matches_the_document(client, auth, backends, spec):
    conforms = Conformance(spec)
    headers = auth.key("*")
    hook = subscribe(client, headers, events=["task.completed", "task.cancelled"])
    tasks = [manual_task(client, headers) for _ in range(3)]
    complete(client, headers, tasks[0])
    cancel(client, headers, tasks[1])
    complete(client, headers, tasks[2])
    fan_out(client)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhook_deliveries SET status = 'FAILED', attempts = 7, error = 'HTTP 500',"
            " response_status = 500, response_time_ms = 12, last_attempt_at = now()"
            " WHERE task_id = %s",
            (tasks[1],),
        )
    path = f"{URL}/{{webhook_id}}/deliveries"
    page = conforms("GET", path, client.get(f"{URL}/{hook}/deliveries?limit=2", headers=headers))
    assert [d["taskId"] for d in page["items"]] == [tasks[2], tasks[1]]  # newest first
    assert page["pagination"]["totalItems"] == 3 and page["pagination"]["totalPages"] == 2
    first = page["items"][0]
    assert set(first) == {
        "id",
        "eventId",
        "type",
        "taskId",
        "status",
        "attempts",
        "lastAttemptAt",
        "nextAttemptAt",
        "responseStatus",
        "responseTimeMs",
        "error",
        "createdAt",
    }
    assert (first["type"], first["status"], first["attempts"]) == ("task.completed", "PENDING", 0)
    assert first["nextAttemptAt"] is not None and first["lastAttemptAt"] is None
    failed = page["items"][1]
    assert (failed["status"], failed["attempts"], failed["error"]) == ("FAILED", 7, "HTTP 500")
    assert (failed["responseStatus"], failed["responseTimeMs"]) == (500, 12)
    assert failed["nextAttemptAt"] is None and failed["lastAttemptAt"] is not None
    rest = log(client, headers, hook, f"limit=2&cursor={page['nextCursor']}")
    assert [d["taskId"] for d in rest["items"]] == [tasks[0]] and "nextCursor" not in rest
    assert [d["taskId"] for d in log(client, headers, hook, "limit=2&page=2")["items"]] == [
        tasks[0]
    ]
    only_failed = log(client, headers, hook, "status=FAILED")
    assert [d["id"] for d in only_failed["items"]] == [failed["id"]]
    assert only_failed["pagination"]["totalItems"] == 1
    pending = log(client, headers, hook, "status=PENDING")["items"]
    assert [d["taskId"] for d in pending] == [tasks[2], tasks[0]]
    one_task = log(client, headers, hook, f"taskId={tasks[0]}")["items"]
    assert [(d["taskId"], d["type"]) for d in one_task] == [(tasks[0], "task.completed")]
    assert log(client, headers, hook, f"taskId={uuid.uuid4()}")["items"] == []
    for query, field in [
        ("status=LOST", "status"),
        ("taskId=nope", "taskId"),
        ("limit=101", "limit"),
        ("bogus=1", "bogus"),
        ("cursor=%%%", "cursor"),
    ]:
        response = client.get(f"{URL}/{hook}/deliveries?{query}", headers=headers)
        assert response.status_code == 400, query
        assert conforms("GET", path, response)["error"]["details"]["field"] == field, query
    missing = client.get(f"{URL}/{uuid.uuid4()}/deliveries", headers=headers)
    assert conforms("GET", path, missing)["error"]["code"] == "NOT_FOUND"


def test_redeliver_makes_a_delivery_pending_again_with_the_same_event(client, auth, backends, spec):
    conforms = Conformance(spec)
    headers = auth.key("*")
    hook = subscribe(client, headers)
    other = subscribe(client, headers)
    task = manual_task(client, headers)
    complete(client, headers, task)
    original = log(client, headers, hook)["items"][0]
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhook_deliveries SET status = 'FAILED', attempts = 12,"
            " next_attempt_at = now() - interval '1 day', error = 'timed out after 10 s'"
            " WHERE id = %s",
            (original["id"],),
        )
    path = f"{URL}/{{webhook_id}}/deliveries/{{delivery_id}}/redeliver"
    url = f"{URL}/{hook}/deliveries/{original['id']}/redeliver"
    response = client.post(url, headers=headers)
    assert response.status_code == 202, response.get_json()
    again = conforms("POST", path, response)
    assert (again["id"], again["eventId"]) == (original["id"], original["eventId"])
    assert again["status"] == "PENDING" and again["attempts"] == 12 and again["error"] is None
    assert again["nextAttemptAt"] is not None
    assert log(client, headers, hook, "status=PENDING")["items"][0]["id"] == original["id"]
    # Another subscription's delivery, an unknown one, a malformed id: not found.
    theirs = log(client, headers, other)["items"][0]["id"]
    for delivery in (theirs, str(uuid.uuid4()), "nope"):
        refused = client.post(f"{URL}/{hook}/deliveries/{delivery}/redeliver", headers=headers)
        assert conforms("POST", path, refused)["error"]["code"] == "NOT_FOUND", delivery
    # Another owner cannot, tasks:admin can.
    bob = auth.key(["webhooks:write"], owner="bob")
    assert client.post(url, headers=bob).status_code == 404
    ops = auth.key(["webhooks:write", "tasks:admin"], owner="ops")
    assert client.post(url, headers=ops).status_code == 202
    # A disabled subscription's delivery would fail unsent: 409 until it is re-enabled.
    client.patch(f"{URL}/{hook}", json={"disabled": True}, headers=headers)
    conflict = client.post(url, headers=headers)
    assert conforms("POST", path, conflict)["error"]["code"] == "CONFLICT"
    assert "re-enable" in conflict.get_json()["error"]["message"]


def test_the_test_event_goes_to_that_subscription_only(client, auth, spec):
    conforms = Conformance(spec)
    headers = auth.key(["webhooks:read", "webhooks:write"])
    hook = subscribe(client, headers, events=["task.failed"], filter={"taskDefinitionId": "x"})
    other = subscribe(client, headers)
    path = f"{URL}/{{webhook_id}}/test"
    response = client.post(f"{URL}/{hook}/test", headers=headers)
    assert response.status_code == 202, response.get_json()
    queued = conforms("POST", path, response)
    assert (queued["type"], queued["taskId"], queued["status"]) == ("webhook.test", None, "PENDING")
    items = log(client, headers, hook)["items"]
    assert [(d["id"], d["eventId"]) for d in items] == [(queued["id"], queued["eventId"])]
    assert log(client, headers, other)["items"] == []
    client.patch(f"{URL}/{hook}", json={"disabled": True}, headers=headers)
    conflict = client.post(f"{URL}/{hook}/test", headers=headers)
    assert conforms("POST", path, conflict)["error"]["code"] == "CONFLICT"
    missing = client.post(f"{URL}/{uuid.uuid4()}/test", headers=headers)
    assert conforms("POST", path, missing)["error"]["code"] == "NOT_FOUND"


def test_deleting_a_subscription_deletes_its_log(client, auth, backends):
    headers = auth.key("*")
    hook = subscribe(client, headers)
    task = manual_task(client, headers)
    complete(client, headers, task)
    assert len(log(client, headers, hook)["items"]) == 1
    assert client.delete(f"{URL}/{hook}", headers=headers).status_code == 204
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = %s", (hook,))
        assert cur.fetchone() == (0,)


def test_subscription_responses_match_the_document(client, auth, spec):
    conforms = Conformance(spec)
    headers = auth.key("*")
    one = f"{URL}/{{webhook_id}}"
    created = conforms(
        "POST",
        URL,
        client.post(
            URL,
            json={"url": RECEIVER, "filter": {"taskDefinitionId": "echo"}, "description": "d"},
            headers=headers,
        ),
    )
    hook = created["id"]
    conforms("GET", URL, client.get(URL, headers=headers))
    conforms("GET", one, client.get(f"{URL}/{hook}", headers=headers))
    disabled = client.patch(f"{URL}/{hook}", json={"disabled": True}, headers=headers)
    assert conforms("PATCH", one, disabled)["disabledAt"]
    rotated = client.post(f"{URL}/{hook}/rotate-secret", headers=headers)
    assert conforms("POST", one + "/rotate-secret", rotated)["previousSecretExpiresAt"]
    bad = client.post(URL, json={"url": "ftp://x"}, headers=headers)
    assert conforms("POST", URL, bad)["error"]["code"] == "VALIDATION_ERROR"
    assert conforms("GET", one, client.get(f"{URL}/{uuid.uuid4()}", headers=headers))
    assert client.delete(f"{URL}/{hook}", headers=headers).status_code == 204


def test_a_long_log_counts_up_to_the_cap_then_estimates(app_with, auth):
    client = app_with(list_exact_count_max=2).test_client()
    headers = auth.key("*")
    hook = subscribe(client, headers)
    for _ in range(4):
        task = manual_task(client, headers)
        complete(client, headers, task)
    capped = log(client, headers, hook, "limit=1")["pagination"]
    assert capped["totalItemsExact"] is False and capped["totalItems"] >= 3
    narrow = log(client, headers, hook, f"taskId={task}")["pagination"]
    assert (narrow["totalItems"], narrow["totalItemsExact"]) == (1, True)


def _rows_read(plan: Any) -> int:
    """The rows every node of an EXPLAIN (ANALYZE, FORMAT JSON) plan read: returned or filtered."""
    if isinstance(plan, list):
        return sum(_rows_read(p) for p in plan)
    if not isinstance(plan, dict):
        return 0
    loops = int(plan.get("Actual Loops", 1))
    own = 0
    if "Scan" in str(plan.get("Node Type", "")):
        own = (int(plan.get("Actual Rows", 0)) + int(plan.get("Rows Removed by Filter", 0))) * loops
    return own + sum(_rows_read(v) for k, v in plan.items() if k in ("Plan", "Plans"))


def insert_subscription(cur: Any, hook: uuid.UUID) -> None:
    """A subscription to task.completed, written directly (for logs seeded by SQL)."""
    cur.execute(
        "INSERT INTO webhooks (id, owner, url, secret, events)"
        " VALUES (%s, 'log-owner', %s, 'whsec_x', ARRAY['task.completed'])",
        (hook, RECEIVER),
    )


def test_the_log_filters_read_only_their_rows_of_a_long_log(backends):
    """`status=FAILED` and `taskId` do not walk a busy subscription's whole log (0021).

    Before, both read the log index newest first and filtered: every row of the log for a
    filter that matches a few (a log of 7 days at 500/s holds 300 million).
    """
    from shared.store import deliveries
    from shared.store._rows import capped_statement

    url = backends.database_url
    hook, task = uuid.uuid4(), uuid.uuid4()
    with ledger(url) as conn, conn.cursor() as cur:
        insert_subscription(cur, hook)
        # 20,000 delivered rows of other tasks; the task's two events and a failed delivery
        # among the oldest, so a walk from the newest would read nearly all of them.
        cur.execute(
            "WITH e AS (INSERT INTO webhook_events (id, type, task_id, created_at)"
            " SELECT gen_random_uuid(), 'task.completed', gen_random_uuid(),"
            " now() - make_interval(secs => g) FROM generate_series(1, 20000) g"
            " UNION ALL VALUES"
            " (gen_random_uuid(), 'task.started', %(t)s, now() - interval '1 day'),"
            " (gen_random_uuid(), 'task.failed', %(t)s, now() - interval '1 day' + interval '1 s')"
            " RETURNING *)"
            " INSERT INTO webhook_deliveries (id, event_id, webhook_id, type, task_id, status,"
            " created_at) SELECT gen_random_uuid(), e.id, %(w)s, e.type, e.task_id,"
            " CASE WHEN e.type = 'task.failed' THEN 'FAILED' ELSE 'DELIVERED' END, e.created_at"
            " FROM e",
            {"t": task, "w": hook},
        )
        cur.execute("ANALYZE webhook_events")
        cur.execute("ANALYZE webhook_deliveries")
    try:
        cases = {
            "status=FAILED": ("FAILED", None, ["task.failed"]),
            "taskId": (None, task, ["task.failed", "task.started"]),
            "both": ("FAILED", task, ["task.failed"]),
        }
        with ledger(url) as conn, conn.cursor() as cur:
            for name, (status, task_id, types) in cases.items():
                page = store.list_deliveries(conn, hook, status=status, task_id=task_id, limit=21)
                assert [d.type for d in page] == types, name
                sql, params = deliveries._log_page(hook, status, task_id, 21, 0, None)
                cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
                plan = cur.fetchone()[0]
                assert _rows_read(plan) < 100, (name, plan)
                # The page's total: the capped count reads as little.
                clause, where = deliveries._log_where(hook, status, task_id)
                counted = capped_statement("webhook_deliveries", clause)
                cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + counted, [*where, 10001])
                plan = cur.fetchone()[0]
                assert _rows_read(plan) < 100, (name, plan)
                assert store.count_delivery_log(
                    conn, hook, status=status, task_id=task_id, exact_max=10000
                ) == (len(types), True)
    finally:
        with ledger(url) as conn, conn.cursor() as cur:
            cur.execute(
                "DELETE FROM webhook_events WHERE id IN"
                " (SELECT event_id FROM webhook_deliveries WHERE webhook_id = %s)",
                (hook,),
            )
            cur.execute("DELETE FROM webhook_deliveries WHERE webhook_id = %s", (hook,))
            cur.execute("DELETE FROM webhooks WHERE id = %s", (hook,))
