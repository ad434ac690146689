"""The /api/v1/schedules endpoints: validation like a submission, CRUD, owner scope, trigger."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

URL = "/api/v1/schedules"


def body(**over: Any) -> dict[str, Any]:
    """A valid request; a field given as None is left out."""
    doc = {
        "name": "every minute",
        "interval": 60000,
        "task": {"taskDefinitionId": "echo", "input": {"hello": "world"}},
        **over,
    }
    return {k: v for k, v in doc.items() if v is not None}


def create(client: Any, headers: dict[str, str], **over: Any) -> dict[str, Any]:
    response = client.post(URL, json=body(**over), headers=headers)
    assert response.status_code == 201, response.get_json()
    assert response.headers["Location"].endswith(f"{URL}/{response.get_json()['id']}")
    return dict(response.get_json())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_create_get_and_defaults(client, auth):
    headers = auth.key("*")
    doc = create(client, headers)
    assert doc["interval"] == 60000 and "cron" not in doc
    assert (doc["timezone"], doc["overlapPolicy"], doc["catchupWindow"]) == ("UTC", "ALLOW", 60000)
    assert doc["paused"] is False and doc["lastRunAt"] is None and doc["skippedSlots"] == 0
    next_run = at(doc["nextRunAt"])
    assert at(doc["createdAt"]) < next_run <= at(doc["createdAt"]) + timedelta(minutes=1, seconds=1)
    assert client.get(f"{URL}/{doc['id']}", headers=headers).get_json() == doc


def test_cron_in_a_time_zone(client, auth):
    doc = create(client, auth.key("*"), interval=None, cron="0 9 * * *", timezone="Europe/Berlin")
    nxt = at(doc["nextRunAt"]).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (nxt.hour, nxt.minute) == (9, 0) and doc["cron"] == "0 9 * * *"


def test_validation_like_a_submission(client, auth):
    headers = auth.key("*")
    cases = [
        (body(cron="* * * * *"), 400),  # both
        ({**body(), "interval": 999}, 400),
        ({k: v for k, v in body().items() if k != "interval"}, 400),  # neither
        (body(interval=None, cron="61 * * * *"), 400),
        (body(timezone="Mars/Olympus"), 400),
        (body(overlapPolicy="SOMETIMES"), 400),
        (body(extra=1), 400),
        (body(task={"taskDefinitionId": "no-such-definition"}), 404),
        (body(task={"taskDefinitionId": "echo", "input": "not an object"}), 400),
    ]
    for payload, status in cases:
        response = client.post(URL, json=payload, headers=headers)
        assert response.status_code == status, (payload, response.get_json())


def test_input_against_the_schema_is_422(client, auth):
    schema_bound = {"taskDefinitionId": "calculate-order-total", "input": {"orderId": 5}}
    response = client.post(URL, json=body(task=schema_bound), headers=auth.key("*"))
    assert response.status_code == 422, response.get_json()


def test_patch_pause_resume_and_switch_rule(client, auth):
    headers = auth.key("*")
    doc = create(client, headers)
    url = f"{URL}/{doc['id']}"
    paused = client.patch(url, json={"paused": True}, headers=headers).get_json()
    assert paused["paused"] is True and paused["nextRunAt"] is None
    resumed = client.patch(url, json={"paused": False, "cron": "*/5 * * * *"}, headers=headers)
    doc2 = resumed.get_json()
    assert resumed.status_code == 200 and doc2["cron"] == "*/5 * * * *" and "interval" not in doc2
    assert at(doc2["nextRunAt"]).minute % 5 == 0
    bad = client.patch(url, json={"task": {"taskDefinitionId": "nope"}}, headers=headers)
    assert bad.status_code == 404


def test_list_filters_and_cursor(client, auth):
    headers = auth.key("*")
    ids = [create(client, headers, name=f"s{i}")["id"] for i in range(3)]
    client.patch(f"{URL}/{ids[0]}", json={"paused": True}, headers=headers)
    page = client.get(f"{URL}?limit=2", headers=headers).get_json()
    assert [i["id"] for i in page["items"]] == ids[::-1][:2]
    assert page["pagination"]["totalItems"] == 3
    rest = client.get(f"{URL}?limit=2&cursor={page['nextCursor']}", headers=headers).get_json()
    assert [i["id"] for i in rest["items"]] == [ids[0]] and "nextCursor" not in rest
    paused = client.get(f"{URL}?paused=true", headers=headers).get_json()
    assert [i["id"] for i in paused["items"]] == [ids[0]]
    none = client.get(f"{URL}?taskDefinitionId=other", headers=headers).get_json()
    assert none["items"] == []
    assert client.get(f"{URL}?bogus=1", headers=headers).status_code == 400


def test_owner_scope_and_permissions(client, auth):
    mine = auth.key(["schedules:read", "schedules:write"])
    doc = create(client, mine)
    other = auth.key(["schedules:read", "schedules:write"], owner="bob")
    assert client.get(f"{URL}/{doc['id']}", headers=other).status_code == 404
    assert client.delete(f"{URL}/{doc['id']}", headers=other).status_code == 404
    assert client.get(URL, headers=other).get_json()["items"] == []
    admin = auth.key(["schedules:read", "tasks:admin"], owner="ops")
    assert client.get(f"{URL}/{doc['id']}", headers=admin).status_code == 200
    reader = auth.key(["schedules:read"])
    assert client.post(URL, json=body(), headers=reader).status_code == 403
    assert client.get(URL, headers=auth.key(["tasks:read"])).status_code == 403
    assert client.get(f"{URL}/{uuid.uuid4()}", headers=mine).status_code == 404
    assert client.get(f"{URL}/not-a-uuid", headers=mine).status_code == 404


def test_trigger_and_delete_keep_tasks(client, auth):
    headers = auth.key("*")
    doc = create(client, headers)
    fired = client.post(f"{URL}/{doc['id']}/trigger", headers=headers)
    assert fired.status_code == 201, fired.get_json()
    task_id = fired.get_json()["id"]
    assert fired.headers["Location"].endswith(f"/api/v1/tasks/{task_id}")
    task = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert (task["scheduleId"], task["scheduledFor"]) == (doc["id"], None)
    listed = client.get(f"/api/v1/tasks?scheduleId={doc['id']}", headers=headers).get_json()
    assert [t["id"] for t in listed["items"]] == [task_id]
    assert listed["items"][0]["scheduleId"] == doc["id"]
    other = client.get(f"/api/v1/tasks?scheduleId={uuid.uuid4()}", headers=headers).get_json()
    assert other["items"] == []
    assert client.delete(f"{URL}/{doc['id']}", headers=headers).status_code == 204
    assert client.get(f"{URL}/{doc['id']}", headers=headers).status_code == 404
    assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 200
    gone = client.post(f"{URL}/{doc['id']}/trigger", headers=headers)
    assert gone.status_code == 404
