"""Everything that refuses a request before a view runs: body guards, strict JSON, webargs."""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

import flask
import flask_smorest
from flask import request
from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from config.settings import Settings
from shared.errors import PayloadTooLarge, ValidationError

# A JSON string; possessive, so an unterminated one is consumed once and never rescanned
# (linear time on hostile input).
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def json_nesting(raw: bytes) -> int:
    """Return the deepest bracket nesting of a JSON text without parsing it (no recursion)."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    # Running sum of +1/-1 steps, all in C: a 1 MiB body costs milliseconds.
    return max(0, max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0))


def check_body(settings: Settings) -> None:
    """Refuse oversize bodies before reading them and deeply nested JSON before parsing it."""
    # Postgres cannot store NUL in text: refuse it here rather than fail (500) in a query.
    if "\x00" in request.path or b"%00" in request.query_string:
        raise ValidationError("the URL may not contain NUL characters")
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"the body is larger than {settings.max_body_bytes} bytes",
            {"limit": settings.max_body_bytes},
        )
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        raw = request.get_data(cache=True)  # at most max_body_bytes + 1 bytes are read
        if len(raw) > settings.max_body_bytes:  # chunked: there was no Content-Length to check
            raise PayloadTooLarge(
                f"the body is larger than {settings.max_body_bytes} bytes",
                {"limit": settings.max_body_bytes},
            )
        if request.is_json and json_nesting(raw) > settings.max_json_depth:
            raise ValidationError(
                f"the JSON body is nested deeper than {settings.max_json_depth} levels",
                {"limit": settings.max_json_depth},
            )


# A \u escape of NUL or of a surrogate: the only ways such characters get into JSON text.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON value", name, 0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise json.JSONDecodeError("number out of range", text[:40], 0)
    return value


def loads_strict(data: str | bytes) -> Any:
    """Parse JSON that Postgres can store: no NaN, Infinity, overflow, NUL or lone surrogate.

    Python's json accepts all of those, and Postgres then refuses them: a 500 instead of a
    400. Every failure is a JSONDecodeError (a ValueError), which webargs and Flask turn into
    400 responses.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer longer than Python will convert
        raise json.JSONDecodeError(str(exc), "", 0) from None
    # Raw control characters are invalid JSON, so such text can only come from an escape;
    # look at the strings only when the raw text has one (almost never).
    if _SUSPECT_ESCAPE.search(text) and _has_unstorable_text(value):
        raise json.JSONDecodeError("strings may not contain NUL or unpaired surrogates", "", 0)
    return value


def _has_unstorable_text(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, strict when reading (`request.get_json()` in any view)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_strict(s)


class Parser(FlaskParser):
    """Malformed requests are 400 VALIDATION_ERROR; 422 is kept for input failing a schema."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        return loads_strict(req.get_data(cache=True))


class Blueprint(flask_smorest.Blueprint):
    """The project's blueprint class."""

    ARGUMENTS_PARSER = Parser()
