"""Per-principal rate limits in Redis: buckets, headers, 429, proxies, the Redis-down fallback."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from api.app import create_app
from cli.servers import RedisServer, free_port

DEFAULT = "5/minute"
BULK = "2/minute"
TASKS = "/api/v1/tasks"
DEFINITIONS = "/api/v1/tasks/definitions"
HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@pytest.fixture
def settings(base_settings):
    return base_settings.with_overrides(
        ratelimit_enabled=True, ratelimit_default=DEFAULT, ratelimit_bulk=BULK
    )


def remaining(response: Any) -> int:
    return int(response.headers["X-RateLimit-Remaining"])


def assert_refused(response: Any) -> None:
    assert response.status_code == 429, response.get_json()
    assert response.get_json()["error"]["code"] == "RATE_LIMITED"
    assert set(response.get_json()["error"]) == {"code", "message", "details"}
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    assert remaining(response) == 0


def test_every_response_counts_down_and_the_next_one_is_refused(client, auth):
    headers = auth.key("tasks:definitions:list")
    before = time.time()
    seen = []
    for _ in range(5):
        response = client.get(DEFINITIONS, headers=headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert "Retry-After" not in response.headers  # only a refusal says when to retry
        seen.append(remaining(response))
    assert seen == [4, 3, 2, 1, 0]
    reset = int(response.headers["X-RateLimit-Reset"])  # Unix time when the window ends
    assert before + 55 <= reset <= time.time() + 62
    assert_refused(client.get(DEFINITIONS, headers=headers))


def test_the_default_bucket_is_per_principal_and_shared_by_endpoints(client, auth):
    alice = auth.key(["tasks:read", "tasks:definitions:list"], owner="alice")
    for path in (DEFINITIONS, f"{TASKS}/{uuid.uuid4()}") * 2 + (DEFINITIONS,):
        assert client.get(path, headers=alice).status_code in (200, 404)
    assert_refused(client.get(f"{TASKS}/{uuid.uuid4()}", headers=alice))
    # Another key, even of the same owner, has a bucket of its own.
    other = auth.key(["tasks:definitions:list"], owner="alice")
    assert remaining(client.get(DEFINITIONS, headers=other)) == 4


def test_jwt_principals_are_limited_by_subject(client, auth):
    for _ in range(5):
        # A fresh token each time: the bucket follows the subject, not the token.
        assert (
            client.get(
                DEFINITIONS, headers=auth.token("tasks:definitions:list", subject="carol")
            ).status_code
            == 200
        )
    assert_refused(
        client.get(DEFINITIONS, headers=auth.token("tasks:definitions:list", subject="carol"))
    )
    assert (
        client.get(
            DEFINITIONS, headers=auth.token("tasks:definitions:list", subject="dave")
        ).status_code
        == 200
    )


def test_error_responses_carry_the_headers_and_count(client, auth):
    headers = auth.key("tasks:read")
    responses = [
        client.get(f"{TASKS}/{uuid.uuid4()}", headers=headers),  # 404 from the view
        client.get(DEFINITIONS, headers=headers),  # 403
        client.get("/api/v1/no-such-thing", headers=headers),  # 404 from routing
        client.delete(TASKS, headers=headers),  # 405
        client.post(
            TASKS, data=b"x" * 1_100_000, headers={**headers, "Content-Type": "application/json"}
        ),
    ]
    assert [r.status_code for r in responses] == [404, 403, 404, 405, 413]
    for response in responses:
        assert set(HEADERS) <= set(response.headers.keys()), response.status_code
        assert "Retry-After" not in response.headers
    assert [remaining(r) for r in responses] == [4, 3, 2, 1, 0]
    assert_refused(client.get(f"{TASKS}/{uuid.uuid4()}", headers=headers))


def test_unauthenticated_requests_get_headers_and_are_limited_by_address(client, auth):
    for _ in range(5):
        response = client.get(DEFINITIONS, headers={"X-API-Key": "tes_unknown"})
        assert response.status_code == 401
        assert set(HEADERS) <= set(response.headers.keys())
    assert_refused(client.get(DEFINITIONS))
    # A principal is not charged for the anonymous traffic from the same address.
    assert client.get(DEFINITIONS, headers=auth.key("tasks:definitions:list")).status_code == 200


def test_health_is_exempt(client):
    for _ in range(12):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert not set(HEADERS) & set(response.headers.keys())


def test_bulk_endpoints_share_the_bulk_bucket_and_not_the_default_one(client, auth):
    headers = auth.key(["tasks:execute", "tasks:cancel", "tasks:definitions:list"])
    submitted = client.post(
        f"{TASKS}/bulk",
        json={"tasks": [{"taskDefinitionId": "echo", "input": {}}]},
        headers=headers,
    )
    assert submitted.status_code == 201, submitted.get_json()
    assert submitted.headers["X-RateLimit-Limit"] == "2"
    assert remaining(submitted) == 1
    cancelled = client.post(f"{TASKS}/cancel", json={"ids": [str(uuid.uuid4())]}, headers=headers)
    assert cancelled.status_code == 200
    assert remaining(cancelled) == 0
    assert_refused(
        client.post(f"{TASKS}/cancel", json={"ids": [str(uuid.uuid4())]}, headers=headers)
    )
    listed = client.get(DEFINITIONS, headers=headers)
    assert listed.status_code == 200
    assert listed.headers["X-RateLimit-Limit"] == "5"
    assert remaining(listed) == 4


def test_a_redelivery_by_filter_counts_against_the_bulk_bucket(client, auth):
    headers = auth.key(["webhooks:write", "tasks:definitions:list"])
    created = client.post(
        "/api/v1/webhooks", json={"url": "https://hooks.example.com/x"}, headers=headers
    )
    assert created.status_code == 201, created.get_json()
    path = f"/api/v1/webhooks/{created.get_json()['id']}/deliveries/redeliver"
    first = client.post(path, json={}, headers=headers)
    assert first.status_code == 202, first.get_json()
    assert first.headers["X-RateLimit-Limit"] == "2" and remaining(first) == 1
    assert client.post(path, json={}, headers=headers).status_code == 202
    assert_refused(client.post(path, json={}, headers=headers))
    # The default bucket counted the subscription's creation, and this, nothing else.
    listed = client.get(DEFINITIONS, headers=headers)
    assert listed.headers["X-RateLimit-Limit"] == "5" and remaining(listed) == 3


def test_a_key_with_its_own_rate_limit_gets_it(client, auth):
    headers = auth.key("tasks:definitions:list", rate_limit="7/minute")
    statuses = [client.get(DEFINITIONS, headers=headers) for _ in range(7)]
    assert all(r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "7" for r in statuses)
    assert_refused(client.get(DEFINITIONS, headers=headers))


def test_a_spoofed_forwarded_for_does_not_pick_a_new_bucket(client):
    # No trusted proxy: X-Forwarded-For is the client's word and is ignored.
    for n in range(5):
        response = client.get(DEFINITIONS, headers={"X-Forwarded-For": f"203.0.113.{n}"})
        assert response.status_code == 401
    assert_refused(client.get(DEFINITIONS, headers={"X-Forwarded-For": "198.51.100.77"}))


def test_behind_one_trusted_proxy_only_the_hop_it_appended_counts(settings, clean_db):
    app = create_app(settings.with_overrides(trusted_proxies=1))
    try:
        client = app.test_client()
        # The client forges the left part; the proxy appends the real address on the right.
        for n in range(5):
            forged = {"X-Forwarded-For": f"10.9.9.{n}, 192.0.2.10"}
            assert client.get(DEFINITIONS, headers=forged).status_code == 401
        assert_refused(client.get(DEFINITIONS, headers={"X-Forwarded-For": "1.2.3.4, 192.0.2.10"}))
        # A different real client behind the same proxy has its own bucket.
        other = client.get(DEFINITIONS, headers={"X-Forwarded-For": "192.0.2.11"})
        assert other.status_code == 401
        assert remaining(other) == 4
    finally:
        app.extensions["taskexec"].db.close()


def test_limits_are_off_when_disabled(base_settings, clean_db, auth):
    app = create_app(base_settings.with_overrides(ratelimit_enabled=False))
    try:
        client = app.test_client()
        headers = auth.key("tasks:definitions:list")
        for _ in range(8):
            response = client.get(DEFINITIONS, headers=headers)
            assert response.status_code == 200
            assert "X-RateLimit-Limit" not in response.headers
    finally:
        app.extensions["taskexec"].db.close()


def test_the_api_keeps_serving_when_redis_goes_away(settings, clean_db, auth, tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    app = create_app(settings.with_overrides(redis_url=redis.url))
    try:
        client = app.test_client()
        headers = auth.key("tasks:definitions:list")
        assert remaining(client.get(DEFINITIONS, headers=headers)) == 4
        redis.stop()
        started = time.monotonic()
        responses = [client.get(DEFINITIONS, headers=headers) for _ in range(5)]
        # Counted in process memory from here on: served, with headers, and still limited.
        assert [r.status_code for r in responses] == [200] * 5
        assert all(set(HEADERS) <= set(r.headers.keys()) for r in responses)
        assert_refused(client.get(DEFINITIONS, headers=headers))
        assert time.monotonic() - started < 20  # no per-request connection hang
    finally:
        redis.stop()
        app.extensions["taskexec"].db.close()


def test_the_api_serves_when_redis_was_never_reachable(settings, clean_db, auth):
    app = create_app(settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        client = app.test_client()
        headers = auth.key("tasks:definitions:list")
        responses = [client.get(DEFINITIONS, headers=headers) for _ in range(5)]
        assert [r.status_code for r in responses] == [200] * 5
        assert [remaining(r) for r in responses] == [4, 3, 2, 1, 0]
        assert_refused(client.get(DEFINITIONS, headers=headers))
    finally:
        app.extensions["taskexec"].db.close()
