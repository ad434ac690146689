"""/api/v1/webhooks subscriptions: CRUD, validation, secrets, owner scope, permissions."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook as Verifier

URL = "/api/v1/webhooks"
TERMINAL = ["task.completed", "task.failed", "task.timed_out", "task.cancelled"]
RECEIVER = "https://hooks.example.com/taskexec"


def create(client: Any, headers: dict[str, str], **over: Any) -> dict[str, Any]:
    response = client.post(URL, json={"url": RECEIVER, **over}, headers=headers)
    assert response.status_code == 201, response.get_json()
    doc = dict(response.get_json())
    assert response.headers["Location"].endswith(f"{URL}/{doc['id']}")
    return doc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_create_shows_the_secret_once_and_defaults_to_terminal_events(client, auth):
    headers = auth.key(["webhooks:read", "webhooks:write"])
    doc = create(client, headers, description="orders")
    assert doc["events"] == TERMINAL
    assert doc["filter"] == {"taskDefinitionId": None, "workflowInstanceId": None}
    assert (doc["description"], doc["disabled"], doc["scope"]) == ("orders", False, "own")
    assert doc["disabledReason"] is None and doc["previousSecretExpiresAt"] is None
    secret = doc["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    # The secret is one standardwebhooks accepts, and signs what it verifies.
    verifier = Verifier(secret)
    when = datetime.now().astimezone()
    signature = verifier.sign("msg_1", when, '{"a": 1}')
    verifier.verify(
        '{"a": 1}',
        {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature,
        },
    )
    shown = client.get(f"{URL}/{doc['id']}", headers=headers).get_json()
    assert "secret" not in shown
    assert shown == {k: v for k, v in doc.items() if k != "secret"}
    listed = client.get(URL, headers=headers).get_json()["items"]
    assert [i["id"] for i in listed] == [doc["id"]] and "secret" not in listed[0]
    # Every subscription gets its own secret.
    assert create(client, headers)["secret"] != secret


def test_events_filter_and_description_are_kept_in_order_without_duplicates(client, auth):
    headers = auth.key("*")
    doc = create(
        client,
        headers,
        events=["task.failed", "task.started", "task.failed"],
        filter={"taskDefinitionId": "echo", "workflowInstanceId": "wf-1"},
    )
    assert doc["events"] == ["task.started", "task.failed"]
    assert doc["filter"] == {"taskDefinitionId": "echo", "workflowInstanceId": "wf-1"}
    assert doc["description"] is None and doc["scope"] == "all"  # "*" holds tasks:admin


@pytest.mark.parametrize(
    ("body", "field", "word"),
    [
        ({"url": "ftp://example.com/x"}, "url", "http or https"),
        ({"url": "file:///etc/passwd"}, "url", "http or https"),
        ({"url": "example.com/hook"}, "url", "http or https"),
        ({"url": "https://"}, "url", "host"),
        ({"url": "https://exa mple.com/"}, "url", "space"),
        ({"url": "https://example.com:99999/"}, "url", "URL"),
        ({"url": "https://example.com/" + "x" * 2100}, "url", "2048"),
        ({}, "url", "required"),
        ({"url": 5}, "url", "string"),
        ({"url": RECEIVER, "events": ["task.exploded"]}, "events", "task.exploded"),
        ({"url": RECEIVER, "events": ["task.completed", "webhook.test"]}, "events", "webhook.test"),
        ({"url": RECEIVER, "events": []}, "events", "at least one"),
        ({"url": RECEIVER, "events": "task.completed"}, "events", "list"),
        ({"url": RECEIVER, "events": [1]}, "events[0]", "string"),
        ({"url": RECEIVER, "filter": {"taskId": "x"}}, "filter.taskId", "Unknown"),
        ({"url": RECEIVER, "filter": {"taskDefinitionId": ""}}, "filter.taskDefinitionId", ""),
        ({"url": RECEIVER, "filter": "echo"}, "filter", ""),
        ({"url": RECEIVER, "description": "x" * 1001}, "description", "1000"),
        ({"url": RECEIVER, "secret": "whsec_mine"}, "secret", "Unknown"),
        ({"url": RECEIVER, "disabled": True}, "disabled", "Unknown"),
    ],
)
def test_create_names_the_bad_field(client, auth, body, field, word):
    response = client.post(URL, json=body, headers=auth.key("*"))
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"] == field, error
    assert word in error["details"]["issue"], error
    assert client.get(URL, headers=auth.key("*")).get_json()["items"] == []


def test_the_body_must_be_an_object_of_json(client, auth):
    headers = auth.key("*")
    assert client.post(URL, json=[RECEIVER], headers=headers).status_code == 400
    text = '{"url": "https://a.example/\\u0000"}'
    response = client.post(URL, data=text, content_type="application/json", headers=headers)
    assert response.status_code == 400 and "NUL" in response.get_json()["error"]["message"]


def test_patch_changes_fields_and_replaces_the_filter(client, auth):
    headers = auth.key("*")
    doc = create(client, headers, filter={"taskDefinitionId": "echo", "workflowInstanceId": "w"})
    path = f"{URL}/{doc['id']}"
    changed = client.patch(
        path,
        json={
            "url": "http://hooks.example.com/v2",
            "events": ["task.started"],
            "filter": {"workflowInstanceId": "w2"},
            "description": "v2",
        },
        headers=headers,
    )
    assert changed.status_code == 200, changed.get_json()
    new = changed.get_json()
    assert new["url"] == "http://hooks.example.com/v2" and new["events"] == ["task.started"]
    assert new["filter"] == {"taskDefinitionId": None, "workflowInstanceId": "w2"}
    assert new["description"] == "v2" and "secret" not in new
    assert at(new["updatedAt"]) >= at(doc["updatedAt"]) and new["createdAt"] == doc["createdAt"]
    cleared = client.patch(path, json={"filter": None, "description": None}, headers=headers)
    assert cleared.get_json()["filter"] == {"taskDefinitionId": None, "workflowInstanceId": None}
    assert cleared.get_json()["description"] is None
    untouched = client.patch(path, json={}, headers=headers).get_json()
    assert untouched["events"] == ["task.started"] and untouched["url"].endswith("/v2")
    for bad, field in [
        ({"url": "gopher://x"}, "url"),
        ({"events": ["task.nope"]}, "events"),
        ({"secret": "x"}, "secret"),
        ({"disabled": "maybe"}, "disabled"),
        ({"id": doc["id"]}, "id"),
    ]:
        response = client.patch(path, json=bad, headers=headers)
        assert response.status_code == 400, (bad, response.get_json())
        assert response.get_json()["error"]["details"]["field"] == field


def test_disable_and_re_enable_clear_the_reason(client, auth, backends):
    from cli.base import ledger

    headers = auth.key("*")
    doc = create(client, headers)
    path = f"{URL}/{doc['id']}"
    off = client.patch(path, json={"disabled": True}, headers=headers).get_json()
    assert off["disabled"] is True and off["disabledReason"] == "disabled through the API"
    assert off["disabledAt"] is not None
    # Disabling again keeps the first reason and time.
    again = client.patch(path, json={"disabled": True}, headers=headers).get_json()
    assert (again["disabledReason"], again["disabledAt"]) == (
        off["disabledReason"],
        off["disabledAt"],
    )
    assert (
        client.get(f"{URL}?disabled=true", headers=headers).get_json()["items"][0]["id"]
        == (doc["id"])
    )
    assert client.get(f"{URL}?disabled=false", headers=headers).get_json()["items"] == []
    # As the deliverer disables a failing one: the reason shows, and re-enabling clears it all.
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhooks SET disabled_reason = 'deliveries failing since …',"
            " failing_since = now() - interval '3 days' WHERE id = %s",
            (doc["id"],),
        )
    failing = client.get(path, headers=headers).get_json()
    assert failing["disabledReason"].startswith("deliveries failing") and failing["failingSince"]
    on = client.patch(path, json={"disabled": False}, headers=headers).get_json()
    assert on["disabled"] is False
    assert (on["disabledReason"], on["disabledAt"], on["failingSince"]) == (None, None, None)


def test_rotate_keeps_the_old_secret_for_a_day(client, auth, backends):
    from cli.base import ledger

    headers = auth.key(["webhooks:read", "webhooks:write"])
    doc = create(client, headers)
    rotated = client.post(f"{URL}/{doc['id']}/rotate-secret", headers=headers)
    assert rotated.status_code == 200, rotated.get_json()
    new = rotated.get_json()
    assert new["secret"].startswith("whsec_") and new["secret"] != doc["secret"]
    expires = at(new["previousSecretExpiresAt"])
    assert timedelta(hours=23, minutes=59) < expires - at(new["updatedAt"]) <= timedelta(hours=24)
    shown = client.get(f"{URL}/{doc['id']}", headers=headers).get_json()
    assert "secret" not in shown
    assert shown["previousSecretExpiresAt"] == new["previousSecretExpiresAt"]
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT secret, previous_secret FROM webhooks WHERE id = %s", (doc["id"],))
        assert cur.fetchone() == (new["secret"], doc["secret"])
    third = client.post(f"{URL}/{doc['id']}/rotate-secret", headers=headers).get_json()
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT secret, previous_secret FROM webhooks WHERE id = %s", (doc["id"],))
        assert cur.fetchone() == (third["secret"], new["secret"])


def test_delete(client, auth):
    headers = auth.key("*")
    doc = create(client, headers)
    response = client.delete(f"{URL}/{doc['id']}", headers=headers)
    assert response.status_code == 204 and response.data == b""
    assert client.get(f"{URL}/{doc['id']}", headers=headers).status_code == 404
    assert client.delete(f"{URL}/{doc['id']}", headers=headers).status_code == 404
    assert client.post(f"{URL}/{doc['id']}/rotate-secret", headers=headers).status_code == 404


def test_list_pages_cursor_and_filters(client, auth):
    headers = auth.key("*")
    ids = [create(client, headers, description=f"w{i}")["id"] for i in range(3)]
    create(client, auth.key("*", owner="bob"))  # alice holds tasks:admin: she sees bob's too
    mine = [
        create(client, headers, events=["task.started"])["id"],
    ]
    page = client.get(f"{URL}?limit=2", headers=headers).get_json()
    assert page["pagination"] == {
        "page": 1,
        "limit": 2,
        "totalItems": 5,
        "totalPages": 3,
        "totalItemsExact": True,
    }
    assert page["items"][0]["id"] == mine[0]
    second = client.get(f"{URL}?limit=2&cursor={page['nextCursor']}", headers=headers).get_json()
    third = client.get(f"{URL}?limit=2&cursor={second['nextCursor']}", headers=headers).get_json()
    assert "nextCursor" not in third
    seen = [i["id"] for p in (page, second, third) for i in p["items"]]
    assert len(seen) == 5 and seen[-1] == ids[0]
    by_page = client.get(f"{URL}?limit=2&page=3", headers=headers).get_json()
    assert [i["id"] for i in by_page["items"]] == [ids[0]]
    started = client.get(f"{URL}?event=task.started", headers=headers).get_json()["items"]
    assert [i["id"] for i in started] == mine
    for query in ("bogus=1", "event=task.nope", "limit=0", "limit=101", "cursor=zz", "page=0"):
        assert client.get(f"{URL}?{query}", headers=headers).status_code == 400, query
    both = client.get(f"{URL}?page=1&cursor={page['nextCursor']}", headers=headers)
    assert both.status_code == 400 and both.get_json()["error"]["details"]["field"] == "cursor"


def test_owner_scope(client, auth):
    alice = auth.key(["webhooks:read", "webhooks:write"])
    doc = create(client, alice)
    bob = auth.key(["webhooks:read", "webhooks:write"], owner="bob")
    path = f"{URL}/{doc['id']}"
    assert client.get(path, headers=bob).status_code == 404
    assert client.patch(path, json={"description": "mine"}, headers=bob).status_code == 404
    assert client.delete(path, headers=bob).status_code == 404
    assert client.post(f"{path}/rotate-secret", headers=bob).status_code == 404
    assert client.post(f"{path}/test", headers=bob).status_code == 404
    assert client.get(f"{path}/deliveries", headers=bob).status_code == 404
    assert client.get(URL, headers=bob).get_json()["items"] == []
    error = client.get(path, headers=bob).get_json()["error"]
    assert error["code"] == "NOT_FOUND" and error["details"] == {"webhookId": doc["id"]}
    # tasks:admin sees and manages every owner's subscriptions...
    ops = auth.key(["webhooks:read", "webhooks:write", "tasks:admin"], owner="ops")
    assert client.get(path, headers=ops).status_code == 200
    assert [i["id"] for i in client.get(URL, headers=ops).get_json()["items"]] == [doc["id"]]
    # ...without widening alice's subscription to every owner's tasks.
    patched = client.patch(path, json={"description": "by ops"}, headers=ops).get_json()
    assert patched["description"] == "by ops" and patched["scope"] == "own"
    assert client.get(path, headers=alice).get_json()["description"] == "by ops"
    assert client.get(f"{URL}/{uuid.uuid4()}", headers=alice).status_code == 404
    assert client.get(f"{URL}/not-a-uuid", headers=alice).status_code == 404
    assert client.delete(path, headers=ops).status_code == 204


def test_scope_follows_the_owners_tasks_admin(client, auth):
    admin = auth.key(["webhooks:read", "webhooks:write", "tasks:admin"], owner="ops")
    doc = create(client, admin)
    assert doc["scope"] == "all"
    # The same owner with a key without tasks:admin narrows it when changing it.
    plain = auth.key(["webhooks:read", "webhooks:write"], owner="ops")
    narrowed = client.patch(f"{URL}/{doc['id']}", json={}, headers=plain).get_json()
    assert narrowed["scope"] == "own"


@pytest.mark.parametrize(
    ("method", "path", "needs"),
    [
        ("POST", URL, "webhooks:write"),
        ("GET", URL, "webhooks:read"),
        ("GET", URL + "/{id}", "webhooks:read"),
        ("PATCH", URL + "/{id}", "webhooks:write"),
        ("DELETE", URL + "/{id}", "webhooks:write"),
        ("POST", URL + "/{id}/rotate-secret", "webhooks:write"),
        ("POST", URL + "/{id}/test", "webhooks:write"),
        ("GET", URL + "/{id}/deliveries", "webhooks:read"),
        ("POST", URL + "/{id}/deliveries/{id}/redeliver", "webhooks:write"),
    ],
)
def test_permissions(client, auth, method, path, needs):
    doc = create(client, auth.key("*"))
    url = path.replace("{id}", doc["id"])
    body = {"url": RECEIVER} if method in ("POST", "PATCH") and path == URL else {}
    other = "webhooks:read" if needs == "webhooks:write" else "webhooks:write"
    for permissions in ([other, "tasks:admin", "schedules:write"], []):
        refused = client.open(url, method=method, json=body, headers=auth.key(permissions))
        assert refused.status_code == 403, (permissions, refused.get_json())
        assert needs in refused.get_json()["error"]["message"]
    allowed = client.open(url, method=method, json=body, headers=auth.key([needs]))
    assert allowed.status_code not in (401, 403), allowed.get_json()
    assert client.open(url, method=method, json=body).status_code == 401


def test_a_jwt_with_the_permissions_works_too(client, auth):
    headers = auth.token(["webhooks:read", "webhooks:write"], subject="carol")
    doc = create(client, headers)
    assert client.get(f"{URL}/{doc['id']}", headers=headers).status_code == 200
    assert client.get(f"{URL}/{doc['id']}", headers=auth.key("*", owner="x")).status_code == 200
    assert (
        client.get(f"{URL}/{doc['id']}", headers=auth.token(["webhooks:read"], subject="dan"))
    ).status_code == 404


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[::1]/hook", "loopback"),
    ],
)
def test_a_literal_private_address_is_refused_unless_allowed(app_with, auth, url, word):
    headers = auth.key("*")
    refused = app_with().test_client().post(URL, json={"url": url}, headers=headers)
    assert refused.status_code == 400, refused.get_json()
    error = refused.get_json()["error"]
    assert error["details"]["field"] == "url" and word in error["details"]["issue"], error
    assert "TASKEXEC_WEBHOOK_ALLOW_PRIVATE" in error["details"]["issue"]
    allowing = app_with(webhook_allow_private=True).test_client()
    made = allowing.post(URL, json={"url": url}, headers=headers)
    assert made.status_code == 201, made.get_json()
    # A change of URL is checked the same way.
    moved = (
        app_with()
        .test_client()
        .patch(f"{URL}/{made.get_json()['id']}", json={"url": url}, headers=headers)
    )
    assert moved.status_code == 400 and moved.get_json()["error"]["details"]["field"] == "url"


def test_credentials_in_the_url_are_refused(client, auth):
    response = client.post(URL, json={"url": "https://u:p@example.com/"}, headers=auth.key("*"))
    assert response.status_code == 400
    assert "credentials" in response.get_json()["error"]["details"]["issue"]


def test_the_document_shows_the_secret_only_on_create_and_rotate(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    with_secret = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                schema = (response.get("content") or {}).get("application/json", {}).get("schema")
                if schema == {"$ref": "#/components/schemas/WebhookWithSecret"}:
                    with_secret.append((method, path, status))
    assert sorted(with_secret) == [
        ("post", "/api/v1/webhooks", "201"),
        ("post", "/api/v1/webhooks/{webhook_id}/rotate-secret", "200"),
    ]
    schemas = spec["components"]["schemas"]
    assert "secret" not in schemas["Webhook"]["properties"]
    assert "secret" in schemas["WebhookWithSecret"]["required"]
    events = schemas["Webhook"]["properties"]["events"]["items"]["enum"]
    assert events == ["task.started", "task.retrying", *TERMINAL]


def test_webhook_endpoints_count_against_the_rate_limit(app_with, auth):
    client = app_with(ratelimit_enabled=True, ratelimit_default="3/minute").test_client()
    headers = auth.key("*")
    doc = create(client, headers)
    assert client.get(URL, headers=headers).headers["X-RateLimit-Remaining"] == "1"
    assert client.get(f"{URL}/{doc['id']}/deliveries", headers=headers).status_code == 200
    limited = client.post(URL, json={"url": RECEIVER}, headers=headers)
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1


def test_an_owner_may_have_so_many_subscriptions(app_with, auth):
    client = app_with(webhook_max_per_owner=2).test_client()
    alice = auth.key("*")
    first, _ = create(client, alice), create(client, alice)
    refused = client.post(URL, json={"url": RECEIVER}, headers=alice)
    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "CONFLICT" and error["details"] == {"limit": 2}
    assert "TASKEXEC_WEBHOOK_MAX_PER_OWNER" in error["message"]
    # Per owner: bob still may; and a deleted one makes room.
    assert (
        client.post(URL, json={"url": RECEIVER}, headers=auth.key("*", owner="bob")).status_code
        == 201
    )
    assert client.delete(f"{URL}/{first['id']}", headers=alice).status_code == 204
    assert client.post(URL, json={"url": RECEIVER}, headers=alice).status_code == 201
    unlimited = app_with(webhook_max_per_owner=0).test_client()
    assert unlimited.post(URL, json={"url": RECEIVER}, headers=alice).status_code == 201


def test_racing_creates_do_not_pass_the_limit(app_with, auth):
    from concurrent.futures import ThreadPoolExecutor

    app = app_with(webhook_max_per_owner=3, db_pool_max=20)
    headers = auth.key("*")

    def attempt(_: int) -> int:
        return int(app.test_client().post(URL, json={"url": RECEIVER}, headers=headers).status_code)

    with ThreadPoolExecutor(12) as pool:
        statuses = sorted(pool.map(attempt, range(12)))
    assert statuses == [201] * 3 + [409] * 9
    assert len(app.test_client().get(URL, headers=headers).get_json()["items"]) == 3
