"""`GET /api/v1/task-apis`: every Task API with its jobs in progress (`cortex get` with no name)."""

from __future__ import annotations

from typing import Any

import pytest

from shared import db, store
from tests.api.test_openapi import Conformance

BASE = "/api/v1/task-apis"
LISTER = ["tasks:definitions:read", "tasks:list", "tasks:execute", "tasks:cancel"]


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    return dict(client.get("/api/v1/openapi.json").get_json())


def _published(database_url: str) -> list[str]:
    conn = db.connect(database_url)
    try:
        rows, _ = store.list_definitions(conn, type_=None, search=None, limit=1000, offset=0)
    finally:
        conn.close()
    return [row.id for row in rows]


def test_every_definition_is_listed_as_its_task_api(client, auth, backends):
    headers = auth.key(LISTER)
    response = client.get(BASE, headers=headers)
    assert response.status_code == 200, response.get_json()
    items = response.get_json()["items"]
    names = [item["api_spec"]["name"] for item in items]
    assert names == _published(backends.database_url) and "sleep" in names  # name order
    # Each entry is what `GET /api/v1/task-apis/{apiName}` says about the API.
    sleep = items[names.index("sleep")]
    single = client.get(f"{BASE}/sleep", headers=headers).get_json()
    assert sleep["api_spec"] == single["api_spec"]
    assert sleep["endpoint"] == single["endpoint"] == "http://localhost/api/v1/task-apis/sleep"
    assert client.get(BASE + "/", headers=headers).get_json() == response.get_json()


def test_each_api_shows_its_callers_jobs_in_progress(client, auth):
    alice, bob = auth.key(LISTER, owner="alice"), auth.key(LISTER, owner="bob")
    waiting = client.post(f"{BASE}/sleep", json={"config": {"seconds": 5}}, headers=alice)
    stopped = client.post(f"{BASE}/sleep", json={"config": {"seconds": 5}}, headers=alice)
    client.post(f"{BASE}/echo", json={}, headers=bob)
    stopped_id = stopped.get_json()["job_id"]
    assert client.delete(f"{BASE}/sleep/{stopped_id}", headers=alice).status_code == 200

    def jobs(headers: dict[str, str]) -> dict[str, list[str]]:
        items = client.get(BASE, headers=headers).get_json()["items"]
        return {i["api_spec"]["name"]: [j["job_id"] for j in i["task_job_statuses"]] for i in items}

    seen = jobs(alice)
    assert seen["sleep"] == [waiting.get_json()["job_id"]]  # the stopped one has finished
    assert seen["echo"] == []  # bob's job is not alice's to see
    statuses = client.get(BASE, headers=alice).get_json()["items"]
    shown = next(i for i in statuses if i["api_spec"]["name"] == "sleep")["task_job_statuses"]
    assert shown[0]["status"] == "status_running" and shown[0]["config"] == {"seconds": 5}
    admin = auth.key(["tasks:definitions:read", "tasks:list", "tasks:admin"], owner="root")
    assert len(jobs(admin)["echo"]) == 1 and len(jobs(admin)["sleep"]) == 1


def test_it_needs_what_reading_one_api_needs(client, auth):
    assert client.get(BASE).status_code == 401
    for missing, granted in (
        ("tasks:list", ["tasks:definitions:read"]),
        ("tasks:definitions:read", ["tasks:list"]),
    ):
        refused = client.get(BASE, headers=auth.key(granted))
        assert refused.status_code == 403
        assert refused.get_json()["error"]["details"] == {"required": missing}
        # The same as the single API's read without a jobID.
        assert client.get(f"{BASE}/sleep", headers=auth.key(granted)).status_code == 403


def test_the_list_is_documented_and_answers_as_documented(client, auth, spec):
    operation = spec["paths"][BASE]["get"]
    assert operation["operationId"] == "listTaskApis"
    headers = auth.key(LISTER)
    client.post(f"{BASE}/echo", json={"timeout": 60}, headers=headers)
    body = Conformance(spec)("GET", BASE, client.get(BASE, headers=headers))
    assert any(item["task_job_statuses"] for item in body["items"])
