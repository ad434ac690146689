"""Crafted requests at the edge: tampered cursors, forged Host headers, encoded bodies."""

from __future__ import annotations

import base64
import gzip
import json
import uuid

import pytest

from api.app import create_app
from api.pagination import decode_cursor, encode_cursor
from config.settings import ConfigurationError, Settings
from shared.errors import ValidationError
from tests.helpers import submit

ZERO = "00000000-0000-0000-0000-000000000000"


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# ---------------------------------------------------------------- cursors (no 500)


@pytest.mark.parametrize(
    "moment",
    [
        "2026-12-06T09:00:00+17:38",  # beyond Postgres' ±15:59
        "2026-12-06T09:00:00+01:00:30",  # an offset with seconds
        "2026-12-06T09:00:00.123456-15:59",
        "0001-01-01T00:00:00+05:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-05:00",  # after year 9999 in UTC
    ],
)
def test_a_tampered_cursor_is_never_a_500(client, auth, moment):
    headers = auth.key("*")
    submit(client, headers, "echo", {})
    response = client.get(f"/api/v1/tasks?cursor={cursor_of(f'{moment}|{ZERO}')}", headers=headers)
    assert response.status_code in (200, 400), response.get_json()
    if response.status_code == 400:
        assert response.get_json()["error"]["details"]["field"] == "cursor"
    else:
        assert isinstance(response.get_json()["items"], list)


def test_cursor_times_are_normalised_to_utc():
    moment, tid = decode_cursor(cursor_of(f"2026-12-06T09:00:00+17:38|{ZERO}"))
    assert moment.utcoffset().total_seconds() == 0
    assert moment.isoformat() == "2026-12-05T15:22:00+00:00"
    assert tid == uuid.UUID(ZERO)
    again = decode_cursor(encode_cursor(moment, tid))
    assert again == (moment, tid)
    with pytest.raises(ValidationError):
        decode_cursor(cursor_of(f"0001-01-01T00:00:00+05:00|{ZERO}"))


# ---------------------------------------------------------------- Host headers


def test_a_forged_host_is_not_reflected_in_public_urls(client, auth):
    headers = {**auth.key("*"), "Host": "evil.example"}
    response = client.post("/api/v1/task-apis/echo", json={}, headers=headers)
    assert response.status_code == 200
    job = response.get_json()["job_id"]
    status = client.get(f"/api/v1/task-apis/echo?jobID={job}", headers=headers).get_json()
    assert "evil.example" not in json.dumps(status)
    assert status["endpoint"] == "/api/v1/task-apis/echo"
    listing = client.get("/api/v1/task-apis/echo", headers=headers).get_json()
    assert "evil.example" not in json.dumps(listing)


def test_an_allowed_host_still_gets_an_absolute_url(client, auth):
    headers = {**auth.key("*"), "Host": "127.0.0.1:8000"}
    body = client.get("/api/v1/task-apis/echo", headers=headers).get_json()
    assert body["endpoint"] == "http://127.0.0.1:8000/api/v1/task-apis/echo"


def test_the_public_url_wins_over_any_host(settings, clean_db, auth):
    app = create_app(settings.with_overrides(public_url="https://tasks.example.com"))
    try:
        headers = {**auth.key("*"), "Host": "evil.example"}
        body = app.test_client().get("/api/v1/task-apis/echo", headers=headers).get_json()
        assert body["endpoint"] == "https://tasks.example.com/api/v1/task-apis/echo"
    finally:
        app.extensions["taskexec"].db.close()


@pytest.mark.parametrize(
    "value", ["tasks.example.com", "ftp://x", "https://x/prefix", "https://x?q=1", "https://x:y"]
)
def test_a_public_url_that_is_not_an_origin_is_a_configuration_error(value):
    with pytest.raises(ConfigurationError, match="TASKEXEC_PUBLIC_URL"):
        Settings.from_env(
            {
                "DATABASE_URL": "postgresql://x/y",
                "REDIS_URL": "redis://x",
                "TASKEXEC_PUBLIC_URL": value,
            }
        )


# ---------------------------------------------------------------- Content-Encoding


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP"])
def test_an_encoding_the_service_does_not_decode_is_415(client, auth, encoding):
    headers = {**auth.key("*"), "Content-Encoding": encoding, "Content-Type": "application/json"}
    body = gzip.compress(json.dumps({"taskDefinitionId": "echo", "input": {}}).encode())
    response = client.post("/api/v1/tasks", data=body, headers=headers)
    assert response.status_code == 415
    error = response.get_json()["error"]
    assert "Content-Encoding" in error["message"]
    # Nothing was created.
    assert client.get("/api/v1/tasks", headers=auth.key("*")).get_json()["items"] == []


def test_an_optional_body_with_an_encoding_is_refused_not_ignored(client, auth):
    headers = auth.key("*")
    tid = submit(client, headers, "echo", {})
    encoded = {**headers, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    data = gzip.compress(b'{"force": true, "reason": "x"}')
    response = client.post(f"/api/v1/tasks/{tid}/cancel", data=data, headers=encoded)
    assert response.status_code == 415
    assert client.get(f"/api/v1/tasks/{tid}", headers=headers).get_json()["status"] == "PENDING"


def test_identity_encoding_is_accepted(client, auth):
    headers = {**auth.key("*"), "Content-Encoding": "identity"}
    response = client.post("/api/v1/tasks", json={"taskDefinitionId": "echo"}, headers=headers)
    assert response.status_code == 201
