"""Input limits: 413 before parsing, a nesting-depth limit, bounded envelope fields; never a 500."""

from __future__ import annotations

import io
import time
import tracemalloc
import uuid
from typing import Any

import pytest

TASKS = "/api/v1/tasks"
LIMIT = 1024 * 1024  # the default TASKEXEC_MAX_BODY_BYTES
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def headers(auth) -> dict[str, str]:
    return {**auth.key("*"), **JSON}


def post(client: Any, body: bytes, headers: dict[str, str], path: str = TASKS, **kw: Any) -> Any:
    return client.post(path, data=body, headers=headers, **kw)


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = response.get_json()
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


def echo_with(value: Any) -> dict[str, Any]:
    return {"taskDefinitionId": "echo", "input": {"value": value}}


# ---------------------------------------------------------------- body size


def test_a_body_over_the_limit_is_413_by_its_content_length(client, headers):
    body = b'{"taskDefinitionId": "echo", "input": {"x": "' + b"a" * LIMIT + b'"}}'
    error = assert_error(post(client, body, headers), 413, "PAYLOAD_TOO_LARGE")
    assert error["details"]["limit"] == LIMIT


def test_a_body_just_under_the_limit_is_parsed(client, headers):
    filler = LIMIT - 200
    body = b'{"taskDefinitionId": "echo", "input": {"x": "' + b"a" * filler + b'"}}'
    assert post(client, body, headers).status_code == 201


def test_a_chunked_body_over_the_limit_is_413_without_a_content_length(client, headers):
    body = b'{"taskDefinitionId": "echo", "input": {"x": "' + b"a" * LIMIT + b'"}}'
    response = client.post(
        TASKS,
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        # What gunicorn sets for a chunked request: the server ends the stream.
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.request.content_length is None
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


def test_a_small_chunked_body_is_accepted(client, headers):
    body = b'{"taskDefinitionId": "echo", "input": {"x": 1}}'
    response = client.post(
        TASKS,
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 201, response.get_json()


def test_an_oversize_body_is_refused_before_authentication_matters(client):
    # Even without credentials nothing is read: 413 (or 401), never a parse.
    response = post(client, b"[" * (LIMIT + 10), JSON)
    assert response.status_code in (401, 413)


# ---------------------------------------------------------------- nesting


def nested(depth: int) -> bytes:
    return b'{"taskDefinitionId": "echo", "input": {"v": ' + b"[" * depth + b"]" * depth + b"}}"


def test_the_nesting_limit_is_400_and_the_limit_itself_is_fine(client, headers):
    # The envelope itself is two levels deep: {"input": {"v": ...}}.
    assert post(client, nested(30), headers).status_code == 201
    error = assert_error(post(client, nested(31), headers), 400, "VALIDATION_ERROR")
    assert error["details"]["limit"] == 32


def test_a_deeply_nested_mebibyte_is_refused_cheaply(client, headers):
    body = b"[" * (LIMIT // 2) + b"]" * (LIMIT // 2 - 1)  # just under the size limit
    tracemalloc.start()
    started = time.monotonic()
    try:
        response = post(client, body, headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_error(response, 400, "VALIDATION_ERROR")
    assert peak < 64 * LIMIT, f"peak {peak / LIMIT:.0f} MiB to refuse a 1 MiB body"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_with_an_unterminated_string_or_object_is_not_a_500(client, headers, opener):
    body = opener * 50_000 + b'"' + b"x" * 1000
    assert_error(post(client, body, headers), 400, "VALIDATION_ERROR")


def test_brackets_inside_strings_do_not_count_as_nesting(client, headers):
    body = echo_with("[" * 5000 + "{" * 5000)
    assert client.post(TASKS, json=body, headers=headers).status_code == 201


# ---------------------------------------------------------------- malformed bodies: 400, not 500


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'"just a string"',
        b"null",
        b"\xff\xfe{}",  # not UTF-8
        b'{"taskDefinitionId": "echo", "input": {"v": NaN}}',
        b'{"taskDefinitionId": "echo", "input": {"v": Infinity}}',
        b'{"taskDefinitionId": "echo", "input": {"v": 1e999}}',
        b'{"taskDefinitionId": "echo", "input": {"v": 1' + b"0" * 5000 + b"}}",  # huge integer
        b"1" * 5000,
        b'{"taskDefinitionId": "echo", "input": "not an object"}',
        b'{"taskDefinitionId": ["echo"]}',
        b'{"taskDefinitionId": "echo", "surprise": 1}',
    ],
    ids=lambda b: b[:40].decode("utf-8", "replace"),
)
def test_malformed_submissions_are_400(client, headers, body):
    assert_error(post(client, body, headers), 400, "VALIDATION_ERROR")


def test_bodies_for_other_endpoints_are_checked_too(client, headers):
    task = str(uuid.uuid4())
    for path in (
        f"{TASKS}/bulk",
        f"{TASKS}/cancel",
        f"{TASKS}/{task}/cancel",
        f"{TASKS}/{task}/complete",
    ):
        assert_error(post(client, b"[" * 100 + b"]" * 100, headers, path), 400, "VALIDATION_ERROR")
        assert_error(post(client, b"{" * 3, headers, path), 400, "VALIDATION_ERROR")
        big = b'{"x": "' + b"a" * LIMIT + b'"}'
        assert_error(post(client, big, headers, path), 413, "PAYLOAD_TOO_LARGE")


# ---------------------------------------------------------------- sizes of envelope fields


@pytest.mark.parametrize(
    "path, body",
    [
        (TASKS, {"taskDefinitionId": "x" * 201}),
        (TASKS, {"taskDefinitionId": "echo", "workflowInstanceId": "w" * 201}),
        (TASKS, {"taskDefinitionId": "echo", "idempotencyKey": "k" * 201}),
        (TASKS, {"taskDefinitionId": ""}),
        (f"{TASKS}/bulk", {"tasks": []}),
        (f"{TASKS}/bulk", {"tasks": [{"taskDefinitionId": "echo"}] * 101}),
        (f"{TASKS}/cancel", {"ids": [str(uuid.uuid4())] * 1001}),
        (f"{TASKS}/cancel", {"ids": ["x" * 201]}),
        (f"{TASKS}/cancel", {"workflowInstanceId": "w" * 201}),
        (f"{TASKS}/{uuid.uuid4()}/cancel", {"reason": "r" * 1001}),
    ],
    ids=lambda v: v if isinstance(v, str) else str(v)[:40],
)
def test_oversize_envelope_fields_are_400(client, headers, path, body):
    assert_error(client.post(path, json=body, headers=headers), 400, "VALIDATION_ERROR")


def test_an_oversize_idempotency_header_is_400(client, headers):
    response = client.post(
        TASKS, json=echo_with(1), headers={**headers, "Idempotency-Key": "k" * 201}
    )
    assert_error(response, 400, "VALIDATION_ERROR")


def test_a_bulk_array_filling_the_body_is_refused_without_a_500(client, headers):
    items = b",".join([b"{}"] * 300_000)
    started = time.monotonic()
    response = post(client, b'{"tasks": [' + items + b"]}", headers, f"{TASKS}/bulk")
    assert_error(response, 400, "VALIDATION_ERROR")
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    "query",
    [
        "limit=101",
        "limit=0",
        "page=0",
        "workflowInstanceId=" + "w" * 201,
        "taskDefinitionId=" + "t" * 201,
    ],
)
def test_oversize_list_parameters_are_400(client, headers, query):
    assert_error(client.get(f"{TASKS}?{query}", headers=headers), 400, "VALIDATION_ERROR")
