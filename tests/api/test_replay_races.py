"""Replays racing: two retries by filter take each task once; single retries are per request."""

from __future__ import annotations

import threading
from typing import Any

from cli.base import ledger
from shared import store
from tests.helpers import get, task_row

TASKS = "/api/v1/tasks"
PERMS = ["tasks:execute", "tasks:read", "tasks:list"]


def _failed(database_url: str, count: int) -> list[str]:
    """`count` FAILED echo tasks of alice's, inserted at once."""
    rows = [task_row(owner="alice") for _ in range(count)]
    with ledger(database_url) as conn:
        store.insert_tasks(conn, rows)
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET status = 'FAILED', end_time = now() WHERE id = ANY(%s::uuid[])",
                ([str(r.id) for r in rows],),
            )
    return [str(r.id) for r in rows]


def _replays_per_original(database_url: str) -> dict[str, int]:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT retry_of::text, count(*) FROM tasks WHERE retry_of IS NOT NULL GROUP BY 1"
        )
        return dict(cur.fetchall())


def _at_once(calls: list[Any]) -> list[Any]:
    """Run the calls in threads released together; return their results in order."""
    gate = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        gate.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_racing_retries_by_filter_replay_each_task_once(app, auth, backends):
    headers = auth.key(PERMS, owner="alice")
    originals = _failed(backends.database_url, 300)
    body = {"filter": {"status": "FAILED"}, "limit": 1000}

    def bulk() -> Any:
        return app.test_client().post(f"{TASKS}/retry", json=body, headers=headers)

    for _ in range(3):  # several rounds: the race is real only if the first holder is slow
        responses = _at_once([bulk, bulk, bulk])
        assert all(r.status_code == 201 for r in responses), [r.get_json() for r in responses]
        made = [i for r in responses for i in r.get_json()["items"]]
        assert all("error" not in i for i in made)
        replays = _replays_per_original(backends.database_url)
        assert set(replays) == set(originals), "every FAILED task is replayed"
        assert max(replays.values()) == 1, "none twice"
        # Between them the three requests replayed each task once: one did all, or they split.
        assert sorted(i["retryOf"] for i in made) == sorted(originals)
        with ledger(backends.database_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM tasks WHERE retry_of IS NOT NULL")


def test_two_single_retries_of_one_task_are_two_replays(client, auth, backends):
    headers = auth.key(PERMS, owner="alice")
    (original,) = _failed(backends.database_url, 1)
    url = f"{TASKS}/{original}/retry"
    responses = _at_once([lambda: client.post(url, headers=headers) for _ in range(2)])
    assert [r.status_code for r in responses] == [201, 201]
    ids = {r.get_json()["id"] for r in responses}
    assert len(ids) == 2
    assert set(get(client, headers, original)["retriedBy"]) == ids


def test_an_idempotency_key_makes_a_resent_retry_create_nothing(client, auth, backends):
    headers = {**auth.key(PERMS, owner="alice"), "Idempotency-Key": "fix-42"}
    first_task, second_task = _failed(backends.database_url, 2)
    url = f"{TASKS}/{first_task}/retry"
    responses = _at_once([lambda: client.post(url, headers=headers) for _ in range(2)])
    assert sorted(r.status_code for r in responses) == [200, 201]
    assert len({r.get_json()["id"] for r in responses}) == 1
    replayed = next(r for r in responses if r.status_code == 200)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_json()["retryOf"] == first_task
    assert len(get(client, headers, first_task)["retriedBy"]) == 1
    # The same key for another request (another task, or another body) is a conflict.
    other = client.post(f"{TASKS}/{second_task}/retry", headers=headers)
    assert other.status_code == 409
    changed = client.post(url, headers=headers, json={"priority": "HIGH"})
    assert changed.status_code == 409
    too_long = client.post(url, headers={**headers, "Idempotency-Key": "k" * 201})
    assert too_long.status_code == 400


def test_an_idempotent_retry_matches_the_openapi_document(client, auth, backends):
    from tests.api.test_openapi import Conformance

    conforms = Conformance(client.get("/api/v1/openapi.json").get_json())
    headers = {**auth.key(PERMS, owner="alice"), "Idempotency-Key": "doc-1"}
    (original,) = _failed(backends.database_url, 1)
    path, url = "/api/v1/tasks/{task_id}/retry", f"{TASKS}/{original}/retry"
    assert conforms("POST", path, client.post(url, headers=headers))["retryOf"] == original
    again = client.post(url, headers=headers)
    assert again.status_code == 200
    assert conforms("POST", path, again)["retryOf"] == original
