"""The one place that maps errors to HTTP: every response is the seed's error envelope."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from flask import Flask, Response, jsonify
from marshmallow import Schema, fields, validate
from werkzeug.exceptions import HTTPException

from shared import errors

log = logging.getLogger(__name__)

#: Error class -> HTTP status, looked up along the MRO (most specific first).
STATUS: dict[type[errors.TaskexecError], int] = {
    errors.TaskexecError: 500,
    errors.ValidationError: 400,
    errors.InputValidationError: 422,
    errors.AuthenticationError: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.RateLimited: 429,
    errors.QueueFull: 429,
    errors.ServiceUnavailable: 503,
}


class HttpError(NamedTuple):
    """How one status looks to a client, and how the OpenAPI document describes it."""

    code: str
    #: The message when Flask or Werkzeug raises the status (ours carry their own).
    message: str
    #: The OpenAPI response component (flask-smorest's name for 400, which it refers to),
    #: and its description; None: no operation documents the status.
    component: str | None = None
    description: str | None = None
    #: Header -> the value a domain error sets, or None where another part sets it.
    headers: Mapping[str, str | None] = {}


#: HTTP status -> its code, default message, OpenAPI response and extra headers.
HTTP_ERRORS: dict[int, HttpError] = {
    400: HttpError(
        "VALIDATION_ERROR",
        "The request is malformed",
        "BAD_REQUEST",
        "a malformed body, query, header or URL",
    ),
    401: HttpError(
        "UNAUTHORIZED",
        "Authentication required",
        "UNAUTHORIZED",
        "no valid API key or token",
        {"WWW-Authenticate": 'Bearer, ApiKey header="X-API-Key"'},
    ),
    403: HttpError(
        "FORBIDDEN",
        "Insufficient permissions",
        "FORBIDDEN",
        "the caller lacks the operation's permission",
    ),
    404: HttpError(
        "NOT_FOUND", "No such resource", "NOT_FOUND", "no such resource visible to the caller"
    ),
    405: HttpError("VALIDATION_ERROR", "Method not allowed on this resource"),
    409: HttpError(
        "CONFLICT",
        "Resource state conflict",
        "CONFLICT",
        "the resource's state does not allow this",
    ),
    413: HttpError(
        "PAYLOAD_TOO_LARGE",
        "The request body is too large",
        "PAYLOAD_TOO_LARGE",
        "the body is over the size limit",
    ),
    415: HttpError("VALIDATION_ERROR", "The request body must be JSON"),
    422: HttpError(
        "VALIDATION_ERROR",
        "Request validation failed",
        "UNPROCESSABLE_ENTITY",
        "the input fails the definition's schema",
    ),
    # The limiter sets Retry-After (when the window ends); a domain error cannot know it.
    429: HttpError(
        "RATE_LIMITED",
        "Too many requests",
        "TOO_MANY_REQUESTS",
        "over the caller's rate limit (RATE_LIMITED), or a submission while the caller has"
        " TASKEXEC_MAX_QUEUED_PER_PRINCIPAL tasks not yet running (QUEUE_FULL)",
        {"Retry-After": None},
    ),
    500: HttpError(
        "INTERNAL_ERROR",
        "An internal error occurred",
        "INTERNAL_SERVER_ERROR",
        "a bug; the details are in the server log",
    ),
    503: HttpError(
        "SERVICE_UNAVAILABLE",
        "Service temporarily unavailable",
        "SERVICE_UNAVAILABLE",
        "a backing service is out",
        {"Retry-After": "1"},
    ),
}
#: Every code an error envelope may carry.
ERROR_CODES = sorted({error.code for error in HTTP_ERRORS.values()} | {errors.QueueFull.code})
_INTERNAL = HTTP_ERRORS[500]


# ------------------------------------------------------------------ the envelope


class ErrorBodySchema(Schema):
    code = fields.String(required=True, validate=validate.OneOf(ERROR_CODES))
    message = fields.String(required=True)
    details = fields.Dict(required=True, metadata={"description": "e.g. {field, issue}"})


class ErrorSchema(Schema):
    """Every error response: `{"error": {"code", "message", "details"}}`."""

    error = fields.Nested(ErrorBodySchema, required=True)


def error_body(error: errors.TaskexecError) -> dict[str, Any]:
    """The `{code, message, details}` of an error, as an envelope or a bulk item holds it."""
    return {"code": error.code, "message": error.message, "details": error.details}


def envelope(code: str, message: str, details: Any = None, status: int = 400) -> Response:
    """Build an error response in the seed's envelope."""
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


# ------------------------------------------------------------------ field paths


def field_errors(messages: Any, location: str | None = None) -> dict[str, Any]:
    """Turn marshmallow's nested messages into the seed's `{field, issue}` details.

    The first problem is `field`/`issue`; `errors` lists every one. Nested fields are
    dotted (`executionConfig.retryPolicy.maxRetries`), list items indexed (`tasks[2]`).
    """
    problems: list[dict[str, str]] = []
    _flatten(messages, "", problems)
    return located(problems, location)


def located(problems: list[dict[str, str]], location: str | None = None) -> dict[str, Any]:
    """Details naming the first `{field, issue}` of `problems`, and listing them all."""
    if not problems:
        problems = [{"field": "", "issue": "invalid request"}]
    details: dict[str, Any] = {"field": problems[0]["field"], "issue": problems[0]["issue"]}
    if location:
        details["location"] = location
    details["errors"] = problems
    return details


def _flatten(messages: Any, path: str, out: list[dict[str, str]]) -> None:
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            if key == "_schema":
                child = path
            elif isinstance(key, int):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            _flatten(value, child, out)
    elif isinstance(messages, list | tuple):
        for message in messages:
            _flatten(message, path, out)
    else:
        out.append({"field": path, "issue": str(messages)})


# ------------------------------------------------------------------ handlers


def status_for(error: errors.TaskexecError) -> int:
    """Return the HTTP status of an error: the nearest class in the MRO that has one."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def handle_domain_error(error: errors.TaskexecError) -> Response:
    """Answer one of our own errors with its status; 5xx ones get a generic message."""
    status = status_for(error)
    if status >= 500 and status != 503:
        log.error("internal error: %s", error, exc_info=error)
        return envelope(_INTERNAL.code, _INTERNAL.message, None, 500)
    response = envelope(error.code, error.message, error.details, status)
    for name, value in HTTP_ERRORS[status].headers.items():
        if value is not None:
            response.headers[name] = value
    if isinstance(error, errors.QueueFull):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def handle_http_exception(error: HTTPException) -> Response:
    """Answer Flask/Werkzeug's own errors (routing 404/405, 413, 429, webargs' 400)."""
    status = error.code or 500
    known = HTTP_ERRORS.get(status)
    code, message = (known.code, known.message) if known else _fallback(status, error)
    details: Any = {}
    data = getattr(error, "data", None)  # webargs puts marshmallow messages here
    if isinstance(data, dict) and "messages" in data:
        details = request_errors(data["messages"])
        message = f"Invalid {details['field'] or 'request'}: {details['issue']}"
    elif status == 405:
        details = {"allowed": sorted(getattr(error, "valid_methods", None) or [])}
    elif status < 500 and error.description and status not in (404, 413):
        message = str(error.description)
    response = envelope(code, message, details, status)
    if status == 405 and details["allowed"]:
        response.headers["Allow"] = ", ".join(details["allowed"])
    return response


def _fallback(status: int, error: HTTPException) -> tuple[str, str]:
    """A status outside the table: a client error is the caller's to fix, anything else ours."""
    if status < 500:
        return "VALIDATION_ERROR", error.name
    return _INTERNAL.code, _INTERNAL.message


def request_errors(messages: Any) -> dict[str, Any]:
    """Details of a webargs failure ({location: {field: [messages]}}) as {field, issue, ...}."""
    if isinstance(messages, dict) and len(messages) == 1:
        location, inner = next(iter(messages.items()))
        return field_errors(inner, "body" if location == "json" else str(location))
    return field_errors(messages)


def handle_unexpected(error: Exception) -> Response:
    """Answer a bug with a generic 500, logging the traceback for operators."""
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    log.error("unhandled error", exc_info=error)
    return envelope(_INTERNAL.code, _INTERNAL.message, None, 500)


def register(app: Flask) -> None:
    """Install the handlers on `app`."""
    app.register_error_handler(errors.TaskexecError, handle_domain_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
