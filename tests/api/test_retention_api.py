"""Pins and expiresAt through the API; a purged task is 404 and leaves the lists."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from cli.base import ledger
from shared import store
from shared.retention import Retention
from tests.helpers import submit

URL = "/api/v1/tasks"


def end(database_url: str, task_id: str, status: str = "COMPLETED", ago: float = 0.0) -> None:
    """Finish a task in the ledger as a worker would, `ago` seconds ago."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET status = %s, end_time = now() - make_interval(secs => %s)"
            " WHERE id = %s",
            (status, ago, task_id),
        )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_get_shows_expires_at_from_the_end_time_and_pinned(client: Any, auth: Any, backends: Any):
    headers = auth.key()
    task_id = submit(client, headers, "echo", {"message": "hi"})
    pending = client.get(f"{URL}/{task_id}", headers=headers).get_json()
    assert pending["expiresAt"] is None and pending["pinned"] is False
    end(backends.database_url, task_id)
    done = client.get(f"{URL}/{task_id}", headers=headers).get_json()
    ended = at(done["executionMetadata"]["endTime"])
    assert at(done["expiresAt"]) - ended == timedelta(days=30)


def test_failures_take_retention_failed_and_off_shows_null(app_with: Any, auth: Any, backends):
    headers = auth.key()
    client = app_with(retention="off", retention_failed="12h").test_client()
    kept, failed = (submit(client, headers, "echo", {"message": "x"}) for _ in range(2))
    end(backends.database_url, kept)
    end(backends.database_url, failed, status="FAILED")
    assert client.get(f"{URL}/{kept}", headers=headers).get_json()["expiresAt"] is None
    doc = client.get(f"{URL}/{failed}", headers=headers).get_json()
    assert at(doc["expiresAt"]) - at(doc["executionMetadata"]["endTime"]) == timedelta(hours=12)


def test_the_owner_pins_and_unpins(client: Any, auth: Any, backends: Any) -> None:
    headers = auth.key(["tasks:execute", "tasks:read"])
    task_id = submit(client, headers, "echo", {"message": "hi"})
    end(backends.database_url, task_id)
    pinned = client.post(f"{URL}/{task_id}/pin", headers=headers)
    assert pinned.status_code == 200, pinned.get_json()
    assert pinned.get_json()["pinned"] is True and pinned.get_json()["expiresAt"] is None
    assert client.get(f"{URL}/{task_id}", headers=headers).get_json()["pinned"] is True
    unpinned = client.delete(f"{URL}/{task_id}/pin", headers=headers)
    assert unpinned.status_code == 200
    assert unpinned.get_json()["pinned"] is False and unpinned.get_json()["expiresAt"]


def test_pins_need_execute_on_ones_own_task_or_admin(client: Any, auth: Any) -> None:
    task_id = submit(client, auth.key(), "echo", {"message": "hi"})
    reader = client.post(f"{URL}/{task_id}/pin", headers=auth.key(["tasks:read"]))
    assert reader.status_code == 403
    assert reader.get_json()["error"]["details"]["required"] == "tasks:execute"
    stranger = auth.key(["tasks:execute", "tasks:read"], owner="mallory")
    assert client.post(f"{URL}/{task_id}/pin", headers=stranger).status_code == 404
    assert client.delete(f"{URL}/{task_id}/pin", headers=stranger).status_code == 404
    admin = auth.key(["tasks:admin"], owner="root")
    assert client.post(f"{URL}/{task_id}/pin", headers=admin).get_json()["pinned"] is True
    assert client.delete(f"{URL}/{task_id}/pin", headers=admin).get_json()["pinned"] is False
    assert client.post(f"{URL}/{uuid.uuid4()}/pin", headers=admin).status_code == 404
    assert client.post(f"{URL}/not-a-uuid/pin", headers=admin).status_code == 404


def test_a_purged_task_is_404_and_lists_no_longer_count_it(client, auth, backends) -> None:
    headers = auth.key()
    gone, pinned, kept = (submit(client, headers, "echo", {"message": "x"}) for _ in range(3))
    for task_id in (gone, pinned):
        end(backends.database_url, task_id, ago=120)
    assert client.post(f"{URL}/{pinned}/pin", headers=headers).status_code == 200
    with ledger(backends.database_url) as conn:
        classes = Retention(default=60.0, failed=60.0).classes(store.definition_retentions(conn))
        assert store.purge_expired_tasks(conn, classes, 100, 3600.0).deleted == 1
    assert client.get(f"{URL}/{gone}", headers=headers).status_code == 404
    assert client.post(f"{URL}/{gone}/pin", headers=headers).status_code == 404
    listed = client.get(URL, headers=headers).get_json()
    assert listed["pagination"]["totalItems"] == 2
    assert {t["id"] for t in listed["items"]} == {pinned, kept}
