"""Every error the real app can produce is the seed's envelope: routing, 413, depth, 500."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from api.app import create_app
from shared.credentials import mint_token
from tests.helpers import JWT_SECRET, SEED_ORDER


@pytest.fixture(scope="module")
def token() -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(JWT_SECRET, "alice", ["*"])}


@pytest.fixture(scope="module")
def small_app(base_settings: Any) -> Any:
    """An app whose bodies may be at most 1000 bytes."""
    app = create_app(base_settings.with_overrides(max_body_bytes=1000))
    app.config["TESTING"] = True
    yield app
    app.extensions["taskexec"].db.close()


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v2/tasks", "/api/v1/tasks/a/b/c"])
def test_routing_404_uses_the_envelope(client, token, path):
    assert error_of(client.get(path, headers=token), 404)["code"] == "NOT_FOUND"
    assert error_of(client.get(path), 404)["code"] == "NOT_FOUND"  # even without credentials


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("delete", "/api/v1/tasks", {"GET", "POST"}),
        ("put", "/api/v1/tasks", {"GET", "POST"}),
        ("post", "/healthz", {"GET"}),
        ("delete", "/api/v1/tasks/00000000-0000-0000-0000-000000000000", {"GET"}),
    ],
)
def test_405_uses_the_envelope_and_says_what_is_allowed(client, token, method, path, allowed):
    response = getattr(client, method)(path, headers=token)
    error = error_of(response, 405)
    assert allowed <= set(error["details"]["allowed"])
    assert method.upper() not in error["details"]["allowed"]
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


# ---------------------------------------------------------------- 413


def test_a_body_over_the_limit_is_413(small_app, token):
    body = {**SEED_ORDER, "input": {**SEED_ORDER["input"], "orderId": "x" * 2000}}
    response = small_app.test_client().post("/api/v1/tasks", json=body, headers=token)
    error = error_of(response, 413)
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert error["details"] == {"limit": 1000}


def test_a_body_under_the_limit_is_accepted(small_app, token, clean_db):
    response = small_app.test_client().post("/api/v1/tasks", json=SEED_ORDER, headers=token)
    assert response.status_code == 201, response.get_json()


def test_a_body_without_content_length_is_cut_off_at_the_limit(small_app, token):
    # A chunked upload announces no length: the limit must hold while reading, too.
    body = json.dumps({"taskDefinitionId": "echo", "input": {"x": "a" * 5000}}).encode()
    environ = EnvironBuilder(
        path="/api/v1/tasks",
        method="POST",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers=token,
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    app_iter, status, _ = run_wsgi_app(small_app, environ)
    payload = json.loads(b"".join(app_iter))
    assert status.startswith("413")
    assert payload["error"]["code"] == "PAYLOAD_TOO_LARGE"


# ---------------------------------------------------------------- JSON depth


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_too_deep_json_is_400(client, token):
    body = {"taskDefinitionId": "echo", "input": nested(40)}
    error = error_of(client.post("/api/v1/tasks", json=body, headers=token), 400)
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"] == {"limit": 32}


def test_json_at_the_depth_limit_is_accepted(client, token):
    # The body object is level 1, so the input may nest 31 levels.
    body = {"taskDefinitionId": "echo", "input": nested(31)}
    response = client.post("/api/v1/tasks", json=body, headers=token)
    assert response.status_code == 201, response.get_json()


def test_json_deep_enough_to_crash_a_recursive_parser_is_a_clean_400(client, token):
    raw = b'{"taskDefinitionId": "echo", "input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    response = client.post(
        "/api/v1/tasks", data=raw, content_type="application/json", headers=token
    )
    assert error_of(response, 400)["details"] == {"limit": 32}


# ---------------------------------------------------------------- 500


def test_an_unexpected_error_is_a_generic_500_with_the_traceback_logged(settings, clean_db, caplog):
    app = create_app(settings)

    def explode() -> str:
        raise RuntimeError("database password is hunter2")

    app.add_url_rule("/api/v1/explode", "explode", explode)
    try:
        with caplog.at_level(logging.ERROR):
            response = app.test_client().get("/api/v1/explode")
    finally:
        app.extensions["taskexec"].db.close()
    error = error_of(response, 500)
    assert error == {
        "code": "INTERNAL_ERROR",
        "message": "An internal error occurred",
        "details": {},
    }
    assert "hunter2" not in response.get_data(as_text=True)
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert logged, "the 500 was not logged with its traceback"
    assert "hunter2" in logging.Formatter().formatException(logged[0].exc_info)


def test_error_responses_are_not_cached(client):
    response = client.get("/nope")
    assert response.headers["Cache-Control"] == "no-store"
