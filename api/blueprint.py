"""Request parsing for every blueprint: strict JSON, and validation errors that are 400."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import flask
import flask_smorest
from flask.json.provider import DefaultJSONProvider
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

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
