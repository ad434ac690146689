"""Bodies the strict JSON parser refuses are a 400 naming where and why, never an absent body.

Postgres' jsonb and text cannot hold NUL, a lone surrogate is not valid Unicode, and Python
converts integers of at most 4300 digits: each is refused on every endpoint that reads a body.
"""

from __future__ import annotations

from typing import Any

import pytest

TASKS = "/api/v1/tasks"
HUGE = "1" + "0" * 5000

# (what is wrong, the JSON text of the bad value, a word the issue must contain)
BAD_VALUES = [
    ("NUL", r'"x\u0000y"', "NUL"),
    ("lone surrogate", r'"x\ud800y"', "surrogate"),
    ("huge integer", HUGE, "digits"),
]


def post(client: Any, path: str, text: str, headers: dict[str, str]) -> Any:
    return client.post(path, data=text, content_type="application/json", headers=headers)


def located_400(response: Any, field: str, word: str) -> dict[str, Any]:
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    details = error["details"]
    assert details["field"] == field, error
    assert details["location"] == "body"
    assert word in details["issue"] and field in error["message"], error
    assert details["errors"][0] == {"field": field, "issue": details["issue"]}
    return dict(error)


def submit_echo(client: Any, headers: dict[str, str]) -> str:
    response = client.post(TASKS, json={"taskDefinitionId": "echo", "input": {}}, headers=headers)
    assert response.status_code == 201
    return str(response.get_json()["id"])


@pytest.mark.parametrize(("name", "bad", "word"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_submit_names_the_bad_value(client, auth, name, bad, word):
    text = '{"taskDefinitionId": "echo", "input": {"a": ' + bad + "}}"
    located_400(post(client, TASKS, text, auth.key("*")), "input.a", word)


@pytest.mark.parametrize(("name", "bad", "word"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_a_bulk_item_is_named_by_its_index(client, auth, name, bad, word):
    text = (
        '{"tasks": [{"taskDefinitionId": "echo"}, '
        '{"taskDefinitionId": "echo", "input": {"a": [1, ' + bad + "]}}]}"
    )
    response = post(client, f"{TASKS}/bulk", text, auth.key("*"))
    located_400(response, "tasks[1].input.a[1]", word)


@pytest.mark.parametrize(("name", "bad", "word"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_cancel_refuses_the_body_instead_of_cancelling_without_it(client, auth, name, bad, word):
    headers = auth.key("*")
    task_id = submit_echo(client, headers)
    text = '{"force": true, "reason": ' + bad + "}"
    located_400(post(client, f"{TASKS}/{task_id}/cancel", text, headers), "reason", word)
    task = client.get(f"{TASKS}/{task_id}", headers=headers).get_json()
    assert task["status"] != "CANCELLED" and "cancellation" not in task


@pytest.mark.parametrize(("name", "bad", "word"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_a_task_api_job_is_not_created_with_an_empty_config(client, auth, name, bad, word):
    headers = auth.key("*")
    text = '{"config": {"note": ' + bad + '}, "timeout": 5}'
    located_400(post(client, "/api/v1/task-apis/echo", text, headers), "config.note", word)
    listing = client.get("/api/v1/task-apis/echo", headers=headers).get_json()
    assert listing["task_job_statuses"] == [] and listing["recent_job_statuses"] == []


def test_the_example_of_the_report(client, auth):
    text = r'{"taskDefinitionId": "echo", "input": {"a": "x\u0000y"}}'
    error = located_400(post(client, TASKS, text, auth.key("*")), "input.a", "NUL")
    assert "Postgres" in error["details"]["issue"]


@pytest.mark.parametrize(
    ("text", "field", "word"),
    [
        (r'{"taskDefinitionId": "echo", "input": {"k\u0000": 1}}', "input.k\\u0000", "key"),
        (r'{"taskDefinitionId": "echo", "input": {"a": NaN}}', "input.a", "NaN"),
        (r'{"taskDefinitionId": "echo", "input": {"a": [-Infinity]}}', "input.a[0]", "Infinity"),
        (r'{"taskDefinitionId": "echo", "input": {"a": 1e999}}', "input.a", "range"),
        (r'{"taskDefinitionId": "ec\u0000ho"}', "taskDefinitionId", "NUL"),
    ],
)
def test_keys_and_numbers_are_named_too(client, auth, text, field, word):
    located_400(post(client, TASKS, text, auth.key("*")), field, word)


def test_every_bad_value_is_listed(client, auth):
    text = r'{"taskDefinitionId": "echo", "input": {"a": "\u0000", "b": ["\udc00"]}}'
    error = located_400(post(client, TASKS, text, auth.key("*")), "input.a", "NUL")
    assert [e["field"] for e in error["details"]["errors"]] == ["input.a", "input.b[0]"]


def test_what_postgres_can_store_is_still_accepted(client, auth):
    text = r'{"taskDefinitionId": "echo", "input": {"emoji": "\ud83d\ude00", "n": ' + "9" * 4300
    response = post(client, TASKS, text + "}}", auth.key("*"))
    assert response.status_code == 201, response.get_json()
