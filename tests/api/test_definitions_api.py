"""GET /api/v1/tasks/definitions (list, filters, search, pages) and /{id} with versions."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import pytest

from shared import db, store
from shared.definitions import TaskDefinition
from shared.status import TaskType
from tests.helpers import SEED_ORDER

URL = "/api/v1/tasks/definitions"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

# The seed's "Get Task Definition" response, field for field (our inputSchema adds minimums).
SEED_DEFINITION = {
    "id": "calculate-order-total",
    "name": "Calculate Order Total",
    "description": "Calculates the total price of an order including taxes",
    "type": "AUTOMATED",
    "version": "1.2.0",
    "outputSchema": {
        "type": "object",
        "properties": {
            "subtotal": {"type": "number"},
            "tax": {"type": "number"},
            "total": {"type": "number"},
        },
        "required": ["subtotal", "tax", "total"],
    },
    "timeout": 60000,
    "retryPolicy": {"maxRetries": 3, "retryInterval": 60000, "backoffMultiplier": 2},
    "executionConfig": {
        "executor": "standard-executor",
        "securityContext": {"securityLevel": "LOW"},
        "resourceRequirements": {"cpu": "0.1", "memory": "128Mi", "timeoutSeconds": 60},
    },
}
SEED_ORDER_OF_FIELDS = [
    "id",
    "name",
    "description",
    "type",
    "version",
    "inputSchema",
    "outputSchema",
    "timeout",
    "retryPolicy",
    "executionConfig",
    "createdAt",
    "updatedAt",
]


def get(client: Any, headers: dict[str, str], path: str = "", **params: Any) -> Any:
    query = "?" + urlencode(params) if params else ""
    return client.get(URL + path + query, headers=headers)


def published(database_url: str, where: str = "TRUE", params: tuple[Any, ...] = ()) -> list[str]:
    """The ids the database holds (the oracle the list is checked against), in id order."""
    conn = db.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT id FROM task_definitions WHERE {where} ORDER BY id", params)
        ids = [row[0] for row in cur.fetchall()]
    conn.close()
    return ids


@pytest.fixture
def headers(auth: Any) -> dict[str, str]:
    return auth.key(
        ["tasks:definitions:list", "tasks:definitions:read", "tasks:execute", "tasks:read"]
    )


# ---------------------------------------------------------------- get


def test_get_returns_the_seed_document(client, headers):
    response = get(client, headers, "/calculate-order-total")
    assert response.status_code == 200
    doc = response.get_json()
    assert {k: doc[k] for k in SEED_DEFINITION} == SEED_DEFINITION
    assert list(doc)[: len(SEED_ORDER_OF_FIELDS)] == SEED_ORDER_OF_FIELDS
    assert doc["inputSchema"]["required"] == ["orderId", "items"]
    assert doc["inputSchema"]["properties"]["items"]["items"]["required"] == [
        "id",
        "quantity",
        "price",
    ]
    assert RFC3339.match(doc["createdAt"]) and RFC3339.match(doc["updatedAt"])
    assert doc["versions"] == ["1.2.0"]
    # The retry policy is written as in the seed: 2, not 2.0.
    assert re.search(r'"backoffMultiplier":\s*2[,}]', response.get_data(as_text=True))


def test_get_manual_definition(client, headers):
    doc = get(client, headers, "/approve-order").get_json()
    assert doc["type"] == "MANUAL"
    assert doc["outputSchema"]["required"] == ["approved"]


def test_unknown_definition_is_404(client, headers):
    response = get(client, headers, "/no-such-definition")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "NOT_FOUND"
    assert "no-such-definition" in error["message"]
    assert error["details"] == {"definitionId": "no-such-definition"}


# ---------------------------------------------------------------- list


def test_list_has_the_seed_item_fields_in_id_order(client, headers, backends):
    body = get(client, headers, limit=100).get_json()
    every = published(backends.database_url)
    assert [item["id"] for item in body["items"]] == every
    assert {"calculate-order-total", "process-payment", "approve-order", "echo"} <= set(every)
    item = next(i for i in body["items"] if i["id"] == "process-payment")
    assert item == {
        "id": "process-payment",
        "name": "Process Payment",
        "description": "Processes payment through payment gateway",
        "type": "INTEGRATION",
        "version": item["version"],
    }
    assert body["pagination"] == {
        "page": 1,
        "limit": 100,
        "totalItems": len(every),
        "totalPages": 1,
    }


def test_default_page_and_limit(client, headers, backends):
    pagination = get(client, headers).get_json()["pagination"]
    total = len(published(backends.database_url))
    assert pagination == {
        "page": 1,
        "limit": 20,
        "totalItems": total,
        "totalPages": math.ceil(total / 20),
    }


@pytest.mark.parametrize("type_", ["AUTOMATED", "MANUAL", "INTEGRATION"])
def test_filter_by_type(client, headers, backends, type_):
    body = get(client, headers, type=type_, limit=100).get_json()
    expected = published(backends.database_url, "type = %s", (type_,))
    assert expected, "every type has a built-in"
    assert [item["id"] for item in body["items"]] == expected
    assert {item["type"] for item in body["items"]} == {type_}
    assert body["pagination"]["totalItems"] == len(expected)


@pytest.mark.parametrize(
    ("search", "must", "must_not"),
    [
        ("ORDER", {"calculate-order-total", "approve-order"}, {"echo", "process-payment"}),
        ("order", {"calculate-order-total", "approve-order"}, {"echo"}),
        ("Payment Gateway", {"process-payment"}, {"calculate-order-total"}),  # description
        ("  sleeps FOR ", {"sleep"}, {"echo"}),  # surrounding blanks ignored, any case
    ],
)
def test_search_is_case_insensitive_across_name_and_description(
    client, headers, backends, search, must, must_not
):
    body = get(client, headers, search=search, limit=100).get_json()
    ids = {item["id"] for item in body["items"]}
    assert must <= ids
    assert not ids & must_not
    expected = published(
        backends.database_url,
        "name ILIKE %s OR description ILIKE %s",
        (f"%{search.strip()}%", f"%{search.strip()}%"),
    )
    assert sorted(ids) == expected
    assert body["pagination"]["totalItems"] == len(expected)


def test_search_wildcards_are_literal(client, headers):
    # As LIKE patterns these would match "Order" and "Calculate"; as text they match nothing.
    for search in ("o_d", "c%e", "%", "\\"):
        body = get(client, headers, search=search).get_json()
        assert body["items"] == [], search
    assert "allocate-memory" in {
        i["id"] for i in get(client, headers, search="OUT_OF").get_json()["items"]
    }


def test_search_and_type_combine(client, headers):
    body = get(client, headers, search="order", type="MANUAL").get_json()
    assert [item["id"] for item in body["items"]] == ["approve-order"]


def test_an_empty_search_filters_nothing(client, headers, backends):
    body = get(client, headers, search="", limit=100).get_json()
    assert body["pagination"]["totalItems"] == len(published(backends.database_url))


def test_pages_and_page_past_the_end(client, headers, backends):
    every = published(backends.database_url)
    pages = math.ceil(len(every) / 3)
    ids = []
    for page in range(1, pages + 1):
        body = get(client, headers, limit=3, page=page).get_json()
        assert body["pagination"] == {
            "page": page,
            "limit": 3,
            "totalItems": len(every),
            "totalPages": pages,
        }
        ids += [item["id"] for item in body["items"]]
    assert ids == every
    past = get(client, headers, limit=3, page=pages + 1).get_json()
    assert past["items"] == []
    assert past["pagination"]["totalItems"] == len(every)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"type": "ROBOTIC"}, "type"),
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "x"}, "page"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"search": "s" * 201}, "search"),
        ({"serach": "order"}, "serach"),
    ],
)
def test_bad_parameter_is_400_naming_it(client, headers, query, field):
    response = get(client, headers, **query)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"] == field
    assert error["details"]["location"] == "query"


def test_permissions(client, auth):
    lister = auth.key(["tasks:definitions:list"])
    reader = auth.key(["tasks:definitions:read"])
    assert get(client, lister).status_code == 200
    assert get(client, lister, "/echo").status_code == 403
    assert get(client, reader, "/echo").status_code == 200
    response = get(client, reader)
    assert response.status_code == 403
    assert response.get_json()["error"]["details"] == {"required": "tasks:definitions:list"}


# ---------------------------------------------------------------- versions


@pytest.fixture
def versioned(backends: Any) -> Iterator[TaskDefinition]:
    """A definition of this test's own, removed afterwards (definitions outlive clean_db)."""
    definition = TaskDefinition(
        id=f"test-versioned-{uuid.uuid4().hex[:8]}",
        name="Versioned",
        description="First release",
        type=TaskType.AUTOMATED,
        version="1.0.0",
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        output_schema={"type": "object"},
        executor="unserved-executor",
    )
    yield definition
    conn = db.connect(backends.database_url)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM task_definitions WHERE id = %s", (definition.id,))
        cur.execute("DELETE FROM task_definition_versions WHERE id = %s", (definition.id,))
    conn.close()


def publish(database_url: str, definition: TaskDefinition) -> None:
    conn = db.connect(database_url)
    with conn:
        store.publish_definitions(conn, [definition])
    conn.close()


def test_republished_version_keeps_history_and_tasks_keep_theirs(
    client, headers, backends, versioned
):
    publish(backends.database_url, versioned)
    first = client.post(
        "/api/v1/tasks",
        headers=headers,
        json={"taskDefinitionId": versioned.id, "input": {"n": 1, "x": "y"}},
    )
    assert first.status_code == 201

    newer = replace(
        versioned,
        version="1.1.0",
        description="Second release",
        input_schema={
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "additionalProperties": False,
        },
        timeout_ms=5000,
    )
    publish(backends.database_url, newer)
    doc = get(client, headers, f"/{versioned.id}").get_json()
    assert doc["version"] == "1.1.0"
    assert doc["description"] == "Second release"
    assert doc["timeout"] == 5000
    assert doc["inputSchema"]["additionalProperties"] is False
    assert doc["versions"] == ["1.0.0", "1.1.0"]
    listed = get(client, headers, search="second release").get_json()["items"]
    assert [(i["id"], i["version"]) for i in listed] == [(versioned.id, "1.1.0")]

    # New submissions are checked against, and record, the newest version.
    assert (
        client.post(
            "/api/v1/tasks",
            headers=headers,
            json={"taskDefinitionId": versioned.id, "input": {"n": 1, "x": "y"}},
        ).status_code
        == 422
    )
    second = client.post(
        "/api/v1/tasks", headers=headers, json={"taskDefinitionId": versioned.id, "input": {"n": 2}}
    )
    assert second.status_code == 201
    old_task = client.get(f"/api/v1/tasks/{first.get_json()['id']}", headers=headers).get_json()
    new_task = client.get(f"/api/v1/tasks/{second.get_json()['id']}", headers=headers).get_json()
    assert old_task["definitionVersion"] == "1.0.0"
    assert new_task["definitionVersion"] == "1.1.0"
    assert new_task["executionConfig"]["timeout"] == 5000

    # A worker still on the old release (restarted mid-deploy) does not roll the API back.
    publish(backends.database_url, versioned)
    doc = get(client, headers, f"/{versioned.id}").get_json()
    assert (doc["version"], doc["description"]) == ("1.1.0", "Second release")
    assert doc["versions"] == ["1.0.0", "1.1.0"]


def test_republishing_the_same_version_with_changes_updates_it(
    client, headers, backends, versioned
):
    publish(backends.database_url, versioned)
    before = get(client, headers, f"/{versioned.id}").get_json()
    publish(
        backends.database_url,
        replace(versioned, type=TaskType.INTEGRATION, security_context={"securityLevel": "HIGH"}),
    )
    after = get(client, headers, f"/{versioned.id}").get_json()
    assert after["type"] == "INTEGRATION"
    assert after["executionConfig"]["securityContext"] == {"securityLevel": "HIGH"}
    assert after["versions"] == ["1.0.0"]
    assert after["createdAt"] == before["createdAt"]
    # Publishing it unchanged (every worker start) leaves updatedAt alone.
    publish(
        backends.database_url,
        replace(versioned, type=TaskType.INTEGRATION, security_context={"securityLevel": "HIGH"}),
    )
    assert get(client, headers, f"/{versioned.id}").get_json()["updatedAt"] == after["updatedAt"]


def test_seed_order_submission_records_the_definition_version(client, headers):
    created = client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers).get_json()
    task = client.get(f"/api/v1/tasks/{created['id']}", headers=headers).get_json()
    assert task["definitionVersion"] == "1.2.0"
