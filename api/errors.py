"""The one place that maps errors to HTTP: every response is the seed's error envelope."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from api.schemas import field_errors
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
    errors.ServiceUnavailable: 503,
}

#: HTTP status -> (code, message) for errors raised by Flask/Werkzeug itself.
HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("VALIDATION_ERROR", "The request is malformed"),
    401: ("UNAUTHORIZED", "Authentication required"),
    403: ("FORBIDDEN", "Insufficient permissions"),
    404: ("NOT_FOUND", "No such resource"),
    405: ("VALIDATION_ERROR", "Method not allowed on this resource"),
    409: ("CONFLICT", "Resource state conflict"),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large"),
    415: ("VALIDATION_ERROR", "The request body must be JSON"),
    422: ("VALIDATION_ERROR", "Request validation failed"),
    429: ("RATE_LIMITED", "Too many requests"),
    503: ("SERVICE_UNAVAILABLE", "Service temporarily unavailable"),
}


def status_for(error: errors.TaskexecError) -> int:
    """Return the HTTP status of an error: the nearest class in the MRO that has one."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def envelope(code: str, message: str, details: Any = None, status: int = 400) -> Response:
    """Build an error response in the seed's envelope."""
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def handle_domain_error(error: errors.TaskexecError) -> Response:
    """Answer one of our own errors with its status; 5xx ones get a generic message."""
    status = status_for(error)
    if status >= 500 and status != 503:
        log.error("internal error: %s", error, exc_info=error)
        return envelope("INTERNAL_ERROR", "An internal error occurred", None, 500)
    response = envelope(error.code, error.message, error.details, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer, ApiKey header="X-API-Key"'
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


def handle_http_exception(error: HTTPException) -> Response:
    """Answer Flask/Werkzeug's own errors (routing 404/405, 413, 429, webargs' 400)."""
    status = error.code or 500
    code, message = HTTP_CODES.get(status) or _fallback(status, error)
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
    return "INTERNAL_ERROR", "An internal error occurred"


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
    return envelope("INTERNAL_ERROR", "An internal error occurred", None, 500)


def register(app: Flask) -> None:
    """Install the handlers on `app`."""
    app.register_error_handler(errors.TaskexecError, handle_domain_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
