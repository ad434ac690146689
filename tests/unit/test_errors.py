"""Error -> HTTP mapping: every error class and every status code, in the seed's envelope."""

from __future__ import annotations

import inspect
import logging

import pytest
from flask import Flask, abort

from api import errors as api_errors
from shared import errors

E = errors
# Every error class of shared/errors.py -> (HTTP status, envelope code). A new class must be
# added here on purpose: the test below fails until it is.
EXPECTED: dict[type[errors.TaskexecError], tuple[int, str]] = {
    E.TaskexecError: (500, "INTERNAL_ERROR"),
    E.ValidationError: (400, "VALIDATION_ERROR"),
    E.InputValidationError: (422, "VALIDATION_ERROR"),
    E.AuthenticationError: (401, "UNAUTHORIZED"),
    E.PermissionDenied: (403, "FORBIDDEN"),
    E.NotFound: (404, "NOT_FOUND"),
    E.TaskNotFound: (404, "NOT_FOUND"),
    E.DefinitionNotFound: (404, "NOT_FOUND"),
    E.Conflict: (409, "CONFLICT"),
    E.TaskAlreadyFinished: (409, "CONFLICT"),
    E.IdempotencyConflict: (409, "CONFLICT"),
    E.PayloadTooLarge: (413, "PAYLOAD_TOO_LARGE"),
    E.RateLimited: (429, "RATE_LIMITED"),
    E.QueueFull: (429, "QUEUE_FULL"),
    E.ServiceUnavailable: (503, "SERVICE_UNAVAILABLE"),
    # Handler failures are task outcomes; one reaching HTTP is a bug: a generic 500.
    E.TaskFailure: (500, "INTERNAL_ERROR"),
    E.RetryableTaskError: (500, "INTERNAL_ERROR"),
    E.PermanentTaskError: (500, "INTERNAL_ERROR"),
    E.OutputValidationError: (500, "INTERNAL_ERROR"),
    E.TaskCancelled: (500, "INTERNAL_ERROR"),
}
ALL_CLASSES = [
    obj
    for obj in vars(errors).values()
    if inspect.isclass(obj) and issubclass(obj, errors.TaskexecError)
]
SEED_CODES = {
    "VALIDATION_ERROR",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_ERROR",
}


@pytest.fixture(scope="module")
def client():
    app = Flask("errors-under-test")
    api_errors.register(app)
    classes = {cls.__name__: cls for cls in ALL_CLASSES}

    @app.route("/raise/<name>")
    def raise_error(name: str) -> str:
        raise classes[name]("boom", {"field": "x"})

    @app.route("/abort/<int:status>")
    def abort_with(status: int) -> str:
        abort(status)

    @app.route("/bug")
    def bug() -> str:
        raise KeyError("secret-internal-detail")

    @app.route("/only-get", methods=["GET"])
    def only_get() -> str:
        return "ok"

    return app.test_client()


def test_every_error_class_has_an_expected_mapping():
    assert set(ALL_CLASSES) == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_status_for_each_error_class(cls):
    status, code = EXPECTED[cls]
    assert api_errors.status_for(cls()) == status
    if status != 500:
        assert cls.code == code


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_error_class_through_flask(client, cls):
    status, code = EXPECTED[cls]
    response = client.get(f"/raise/{cls.__name__}")
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    if status == 500:
        # Nothing of the failure leaks to the client.
        assert body["error"] == {
            "code": "INTERNAL_ERROR",
            "message": "An internal error occurred",
            "details": {},
        }
    else:
        assert body["error"]["message"] == "boom"
        assert body["error"]["details"] == {"field": "x"}
    if status == 401:
        assert "Bearer" in response.headers["WWW-Authenticate"]
    if status == 503:
        assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("status", sorted(api_errors.HTTP_ERRORS))
def test_every_http_status_in_the_table(client, status):
    response = client.get(f"/abort/{status}")
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == api_errors.HTTP_ERRORS[status][0]
    assert error["code"] in SEED_CODES
    assert error["message"]


@pytest.mark.parametrize("status", sorted(set(api_errors.STATUS.values())))
def test_every_mapped_status_of_a_domain_error_in_the_envelope(client, status):
    response = client.get(f"/abort/{status}")
    assert response.status_code == status
    assert response.get_json()["error"]["code"] in SEED_CODES


@pytest.mark.parametrize(
    ("cls", "status"),
    # QueueFull is the one second code of a status: a 429 for queued work, not for the rate.
    [(c, s) for c, s in api_errors.STATUS.items() if s != 500 and c is not E.QueueFull],
)
def test_werkzeug_and_domain_errors_agree_on_codes(cls, status):
    # abort(404) from routing and TaskNotFound must look the same to a client.
    assert api_errors.HTTP_ERRORS[status][0] == cls.code


def test_queue_full_is_a_documented_429_code():
    assert api_errors.status_for(E.QueueFull()) == 429
    assert "QUEUE_FULL" in api_errors.ERROR_CODES


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (406, "VALIDATION_ERROR"),
        (410, "VALIDATION_ERROR"),
        (418, "VALIDATION_ERROR"),
        (501, "INTERNAL_ERROR"),
        (502, "INTERNAL_ERROR"),
    ],
)
def test_statuses_outside_the_table(client, status, code):
    response = client.get(f"/abort/{status}")
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_routing_errors_use_the_envelope(client):
    missing = client.get("/no/such/path")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "NOT_FOUND"
    wrong_method = client.delete("/only-get")
    assert wrong_method.status_code == 405
    assert wrong_method.get_json()["error"]["details"] == {"allowed": ["GET", "HEAD", "OPTIONS"]}
    assert wrong_method.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_an_unexpected_exception_is_a_logged_generic_500(client, caplog):
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        response = client.get("/bug")
    assert response.status_code == 500
    assert response.get_json()["error"] == {
        "code": "INTERNAL_ERROR",
        "message": "An internal error occurred",
        "details": {},
    }
    assert "secret-internal-detail" not in response.get_data(as_text=True)
    [record] = [r for r in caplog.records if r.name == "api.errors"]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_error_defaults_and_codes():
    error = errors.TaskNotFound()
    assert error.message == "No such task." and error.details == {}
    assert str(errors.ValidationError("bad", {"f": 1})) == "bad"
    assert errors.PermanentTaskError.retryable is False
    assert errors.RetryableTaskError.retryable is True
    assert errors.OutputValidationError.code == "OUTPUT_VALIDATION_FAILED"


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_documented_in_one_line_and_drawn_in_the_tree(cls):
    assert cls.__doc__ and "\n" not in cls.__doc__.strip()
    assert cls.__name__ in (errors.__doc__ or "")
