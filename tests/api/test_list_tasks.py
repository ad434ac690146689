"""GET /api/v1/tasks: every filter, bad parameters, pagination edges, cursors and tenancy."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from shared import db, store
from shared.status import Status

BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DEFINITIONS = [
    ("echo", "AUTOMATED"),
    ("process-payment", "INTEGRATION"),
    ("approve-order", "MANUAL"),
]
STATUSES = list(Status)
SEED_ITEM_FIELDS = {"id", "taskDefinitionId", "status", "type", "createdAt", "updatedAt"}


@dataclass(frozen=True)
class Row:
    """What the test knows about one seeded task."""

    id: str
    owner: str
    definition: str
    type: str
    status: str
    workflow: str | None
    created_at: datetime


def seed(database_url: str, count: int, owners: tuple[str, ...] = ("alice",)) -> list[Row]:
    """Insert `count` tasks with distinct times (a minute apart) and varied fields."""
    rows = []
    for i in range(count):
        definition, type_ = DEFINITIONS[i % len(DEFINITIONS)]
        rows.append(
            Row(
                id=str(uuid.uuid4()),
                owner=owners[i % len(owners)],
                definition=definition,
                type=type_,
                status=STATUSES[i % len(STATUSES)].value,
                workflow=("wf-a", "wf-b", None)[i % 3] if i % 4 else "wf-c",
                created_at=BASE + timedelta(minutes=i),
            )
        )
    conn = db.connect(database_url)
    with conn:
        store.insert_tasks(
            conn,
            [
                store.NewTask(
                    id=uuid.UUID(r.id),
                    owner=r.owner,
                    task_definition_id=r.definition,
                    definition_version="1.0.0",
                    workflow_instance_id=r.workflow,
                    type=r.type,
                    priority=1,
                    executor="standard-executor",
                    input={},
                    timeout_ms=1000,
                    retry_policy={},
                    published=False,
                )
                for r in rows
            ],
        )
        with conn.cursor() as cur:
            for r in rows:
                cur.execute(
                    "UPDATE tasks SET created_at = %s, updated_at = %s, status = %s WHERE id = %s",
                    (r.created_at, r.created_at, r.status, r.id),
                )
    conn.close()
    return rows


def newest_first(rows: list[Row]) -> list[str]:
    return [r.id for r in sorted(rows, key=lambda r: r.created_at, reverse=True)]


def get(client: Any, headers: dict[str, str], **params: Any) -> Any:
    return client.get("/api/v1/tasks?" + urlencode(params, doseq=True), headers=headers)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def admin(auth: Any) -> dict[str, str]:
    return auth.key("*")


@pytest.fixture
def rows(backends: Any, clean_db: None) -> list[Row]:
    return seed(backends.database_url, 30)


# ---------------------------------------------------------------- shape and order


def test_items_have_the_seed_fields_newest_first(client, admin, rows):
    response = get(client, admin)
    assert response.status_code == 200
    body = response.get_json()
    assert [item["id"] for item in body["items"]] == newest_first(rows)[:20]
    assert body["pagination"] == {
        "page": 1,
        "limit": 20,
        "totalItems": 30,
        "totalPages": 2,
        "totalItemsExact": True,
    }
    first, newest = body["items"][0], max(rows, key=lambda r: r.created_at)
    assert SEED_ITEM_FIELDS <= set(first)
    assert first["taskDefinitionId"] == newest.definition
    assert first["type"] == newest.type
    assert first["status"] == newest.status
    assert first["workflowInstanceId"] == newest.workflow
    assert first["createdAt"] == rfc3339(newest.created_at).replace(":00Z", ":00.000Z")


def test_equal_creation_times_are_ordered_by_id(client, admin, backends, clean_db):
    conn = db.connect(backends.database_url)
    with conn:  # one transaction: every row gets the same now()
        tasks = store.insert_tasks(
            conn,
            [
                store.NewTask(
                    uuid.uuid4(),
                    "alice",
                    "echo",
                    "1.0.0",
                    None,
                    "AUTOMATED",
                    1,
                    "standard-executor",
                    {},
                    1000,
                    {},
                    published=False,
                )
                for _ in range(5)
            ],
        )
    conn.close()
    assert len({t.created_at for t in tasks}) == 1
    ids = [item["id"] for item in get(client, admin, limit=3).get_json()["items"]]
    ids += [item["id"] for item in get(client, admin, limit=3, page=2).get_json()["items"]]
    assert ids == sorted((str(t.id) for t in tasks), reverse=True)


# ---------------------------------------------------------------- filters


FILTERS: list[tuple[str, dict[str, Any], Any]] = [
    ("one status", {"status": "FAILED"}, lambda r: r.status == "FAILED"),
    (
        "several statuses, comma-separated",
        {"status": "PENDING,RUNNING,CANCELLED"},
        lambda r: r.status in ("PENDING", "RUNNING", "CANCELLED"),
    ),
    (
        "several statuses, repeated",
        {"status": ["COMPLETED", "TIMED_OUT"]},
        lambda r: r.status in ("COMPLETED", "TIMED_OUT"),
    ),
    ("type", {"type": "MANUAL"}, lambda r: r.type == "MANUAL"),
    ("workflowInstanceId", {"workflowInstanceId": "wf-a"}, lambda r: r.workflow == "wf-a"),
    (
        "taskDefinitionId",
        {"taskDefinitionId": "process-payment"},
        lambda r: r.definition == "process-payment",
    ),
    (
        "createdAfter is inclusive",
        {"createdAfter": rfc3339(BASE + timedelta(minutes=20))},
        lambda r: r.created_at >= BASE + timedelta(minutes=20),
    ),
    (
        "createdBefore is exclusive",
        {"createdBefore": rfc3339(BASE + timedelta(minutes=5))},
        lambda r: r.created_at < BASE + timedelta(minutes=5),
    ),
    (
        "a window with an offset",
        {"createdAfter": "2024-03-01T14:03:00+02:00", "createdBefore": "2024-03-01T12:10:00Z"},
        lambda r: BASE + timedelta(minutes=3) <= r.created_at < BASE + timedelta(minutes=10),
    ),
    (
        "filters combine",
        {"type": "AUTOMATED", "workflowInstanceId": "wf-c", "status": "PENDING,COMPLETED,FAILED"},
        lambda r: (
            r.type == "AUTOMATED"
            and r.workflow == "wf-c"
            and r.status in ("PENDING", "COMPLETED", "FAILED")
        ),
    ),
    ("nothing matches", {"workflowInstanceId": "wf-none"}, lambda r: False),
]


@pytest.mark.parametrize(("query", "keep"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
def test_filter(client, admin, rows, query, keep):
    expected = newest_first([r for r in rows if keep(r)])
    body = get(client, admin, limit=100, **query).get_json()
    assert [item["id"] for item in body["items"]] == expected
    assert body["pagination"]["totalItems"] == len(expected)
    assert body["pagination"]["totalPages"] == math.ceil(len(expected) / 100)
    assert 0 < len(expected) < len(rows) or query == {"workflowInstanceId": "wf-none"}


# ---------------------------------------------------------------- pagination


def test_pages_cover_every_task_once(client, admin, rows):
    pages = [get(client, admin, limit=7, page=n).get_json() for n in range(1, 6)]
    ids = [item["id"] for body in pages for item in body["items"]]
    assert ids == newest_first(rows)
    assert [len(body["items"]) for body in pages] == [7, 7, 7, 7, 2]  # the last page is short
    for n, body in enumerate(pages, start=1):
        assert body["pagination"] == {
            "page": n,
            "limit": 7,
            "totalItems": 30,
            "totalPages": 5,
            "totalItemsExact": True,
        }


def test_page_past_the_end_is_empty_with_right_totals(client, admin, rows):
    body = get(client, admin, limit=10, page=4).get_json()
    assert body["items"] == []
    assert body["pagination"] == {
        "page": 4,
        "limit": 10,
        "totalItems": 30,
        "totalPages": 3,
        "totalItemsExact": True,
    }
    assert "nextCursor" not in body


def test_empty_result(client, admin, clean_db):
    body = get(client, admin).get_json()
    assert body == {
        "items": [],
        "pagination": {
            "page": 1,
            "limit": 20,
            "totalItems": 0,
            "totalPages": 0,
            "totalItemsExact": True,
        },
    }


def test_limit_bounds_are_inclusive(client, admin, rows):
    assert len(get(client, admin, limit=1).get_json()["items"]) == 1
    body = get(client, admin, limit=100).get_json()
    assert len(body["items"]) == 30
    assert body["pagination"]["totalPages"] == 1


def test_cursor_walks_the_same_order_as_pages(client, admin, rows):
    seen: list[str] = []
    body = get(client, admin, limit=8, status="PENDING,RUNNING,COMPLETED,FAILED").get_json()
    while True:
        seen += [item["id"] for item in body["items"]]
        if "nextCursor" not in body:
            break
        assert len(body["items"]) == 8
        body = get(
            client,
            admin,
            limit=8,
            status="PENDING,RUNNING,COMPLETED,FAILED",
            cursor=body["nextCursor"],
        ).get_json()
        assert body["pagination"]["page"] is None
        assert body["pagination"]["totalItems"] == len(
            [r for r in rows if r.status in ("PENDING", "RUNNING", "COMPLETED", "FAILED")]
        )
    expected = newest_first(
        [r for r in rows if r.status in ("PENDING", "RUNNING", "COMPLETED", "FAILED")]
    )
    assert seen == expected
    assert len(expected) > 8  # it really took several pages


def test_a_full_last_page_has_no_next_cursor(client, admin, rows):
    assert "nextCursor" in get(client, admin, limit=10, page=2).get_json()
    assert "nextCursor" not in get(client, admin, limit=10, page=3).get_json()


# ---------------------------------------------------------------- bad parameters


BAD = [
    ({"status": "FOO"}, "status"),
    ({"status": "PENDING,DONE"}, "status"),
    ({"status": "pending"}, "status"),
    ({"status": ""}, "status"),
    ({"type": "ROBOTIC"}, "type"),
    ({"page": "0"}, "page"),
    ({"page": "-1"}, "page"),
    ({"page": "two"}, "page"),
    ({"page": "1.5"}, "page"),
    ({"limit": "0"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "-5"}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"createdAfter": "yesterday"}, "createdAfter"),
    ({"createdAfter": "2024-03-01T12:00:00"}, "createdAfter"),  # no offset: ambiguous
    ({"createdBefore": "2024-13-01T00:00:00Z"}, "createdBefore"),
    ({"createdBefore": "2024-03-01"}, "createdBefore"),
    ({"workflowInstanceId": ""}, "workflowInstanceId"),
    ({"taskDefinitionId": "x" * 201}, "taskDefinitionId"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "MjAyNC0wMy0wMVQxMjowMDowMHxub3Bl"}, "cursor"),  # decodes, but not a position
    ({"statsu": "PENDING"}, "statsu"),  # a typo is not silently ignored
]


@pytest.mark.parametrize(
    ("query", "field"),
    BAD,
    ids=[f"{k}={v}"[:40] for k, v in (next(iter(q.items())) for q, _ in BAD)],
)
def test_bad_parameter_is_400_naming_it(client, admin, query, field):
    response = get(client, admin, **query)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"] == field
    assert error["details"]["location"] == "query"
    assert error["details"]["issue"]
    assert field in error["message"]


def test_every_bad_parameter_is_listed(client, admin):
    error = get(client, admin, page="0", limit="500", type="X").get_json()["error"]
    assert sorted(e["field"] for e in error["details"]["errors"]) == ["limit", "page", "type"]


def test_page_and_cursor_together_are_refused(client, admin, rows):
    cursor = get(client, admin, limit=5).get_json()["nextCursor"]
    response = get(client, admin, limit=5, page=2, cursor=cursor)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "cursor"


# ---------------------------------------------------------------- large results


def test_totals_beyond_the_exact_limit_are_flagged_estimates(app_with, admin, rows):
    client = app_with(list_exact_count_max=10).test_client()
    big = get(client, admin, limit=4).get_json()["pagination"]
    assert big["totalItemsExact"] is False
    assert big["totalItems"] >= 11  # never below what was counted
    assert big["totalPages"] == math.ceil(big["totalItems"] / 4)
    small = get(client, admin, limit=4, type="MANUAL").get_json()["pagination"]
    assert small == {
        "page": 1,
        "limit": 4,
        "totalItems": 10,
        "totalPages": 3,
        "totalItemsExact": True,
    }


def test_zero_exact_limit_always_counts_exactly(app_with, admin, rows):
    client = app_with(list_exact_count_max=0).test_client()
    assert get(client, admin).get_json()["pagination"]["totalItems"] == 30


# ---------------------------------------------------------------- tenancy and permissions


def test_a_principal_sees_only_its_own_tasks(client, auth, backends, clean_db):
    rows = seed(backends.database_url, 20, owners=("alice", "bob"))
    bob = auth.key(["tasks:list"], owner="bob")
    body = get(client, bob, limit=100).get_json()
    assert [item["id"] for item in body["items"]] == newest_first(
        [r for r in rows if r.owner == "bob"]
    )
    assert body["pagination"]["totalItems"] == 10
    # Filters narrow within the principal's tasks, never reach another's.
    alices_workflow = next(r.workflow for r in rows if r.owner == "alice" and r.workflow)
    scoped = get(client, bob, workflowInstanceId=alices_workflow, limit=100).get_json()
    assert all(item["id"] in {r.id for r in rows if r.owner == "bob"} for item in scoped["items"])
    # tasks:admin sees everyone's.
    admin = auth.key(["tasks:list", "tasks:admin"], owner="carol")
    assert get(client, admin).get_json()["pagination"]["totalItems"] == 20


def test_listing_needs_tasks_list(client, auth):
    response = get(client, auth.key(["tasks:read", "tasks:execute"]))
    assert response.status_code == 403
    assert response.get_json()["error"]["details"] == {"required": "tasks:list"}
    assert client.get("/api/v1/tasks").status_code == 401
