"""Everything that refuses a request before a view runs: body guards, strict JSON, webargs."""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from typing import Any

import flask
import flask_smorest
import orjson
from flask import Response, request
from flask.json.provider import DefaultJSONProvider, _default
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import UnsupportedMediaType

from api.errors import located
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


_WITH_BODY = ("POST", "PUT", "PATCH", "DELETE")


def check_body(settings: Settings) -> None:
    """Refuse oversize bodies before reading them and deeply nested JSON before parsing it."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    # Postgres cannot store NUL in text: refuse it here rather than fail (500) in a query.
    if "\x00" in req.path or b"%00" in req.query_string:
        raise ValidationError("the URL may not contain NUL characters")
    method = req.method
    encoding = req.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity") and method in _WITH_BODY:
        # Nothing here decodes bodies: parsing compressed bytes as JSON would refuse them with
        # a misleading message, or, for a body that is optional, act as if there were none.
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
        )
    length = req.content_length
    if length is not None and length > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"the body is larger than {settings.max_body_bytes} bytes",
            {"limit": settings.max_body_bytes},
        )
    if method in _WITH_BODY:
        raw = req.get_data(cache=True)  # at most max_body_bytes + 1 bytes are read
        if len(raw) > settings.max_body_bytes:  # chunked: there was no Content-Length to check
            raise PayloadTooLarge(
                f"the body is larger than {settings.max_body_bytes} bytes",
                {"limit": settings.max_body_bytes},
            )
        if (
            req.is_json
            # Fewer opening brackets than the limit cannot nest deeper: two counts in C spare
            # the scan of strings for almost every body.
            and raw.count(b"[") + raw.count(b"{") > settings.max_json_depth
            and json_nesting(raw) > settings.max_json_depth
        ):
            raise ValidationError(
                f"the JSON body is nested deeper than {settings.max_json_depth} levels",
                {"limit": settings.max_json_depth},
            )


# A \u escape of NUL or of a surrogate: the only ways such characters get into JSON text.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SUSPECT_ESCAPE_BYTES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# 17 digits in a row: a number orjson might read differently from Python (an integer past 64
# bits becomes a float there), or digits in a string; either way the full parser reads it.
_LONG_DIGITS = re.compile(rb"[0-9]{17}")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class UnstorableJSON(json.JSONDecodeError):
    """Valid JSON that Postgres cannot store; `problems` lists each `{field, issue}`.

    Its `doc` is the text: webargs reads a JSONDecodeError with an empty `doc` as "no body",
    which once let such bodies through as if they were absent.
    """

    def __init__(self, problems: list[dict[str, str]], doc: str) -> None:
        super().__init__(problems[0]["issue"], doc, 0)
        self.problems = problems


class _Refused(ValueError):
    """A value that cannot be stored: raised while parsing fast, kept in place to be located."""

    def __init__(self, issue: str) -> None:
        super().__init__(issue)
        self.issue = issue


_REFUSED = _Refused("refused")


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON value")


def _raise_constant(name: str) -> Any:
    raise _constant(name)


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused("a number out of range (not a double)")


def _finite_float(text: str) -> float:
    value = _float(text)
    if isinstance(value, _Refused):
        raise value
    return value


def _int(text: str) -> int | _Refused:
    try:
        return int(text)
    except ValueError:  # Python converts at most sys.get_int_max_str_digits() digits
        digits = len(text.lstrip("-"))
        limit = sys.get_int_max_str_digits()
        return _Refused(f"an integer of {digits} digits; at most {limit} are accepted")


def loads_strict(data: str | bytes) -> Any:
    """Parse JSON that Postgres can store: no NaN, Infinity, overflow, NUL or lone surrogate.

    Python's json accepts all of those (and refuses integers over 4300 digits), and Postgres
    then refuses them: a 500 instead of a 400. Malformed JSON raises a JSONDecodeError; JSON
    holding such values raises UnstorableJSON, naming each one's place.
    """
    if (
        isinstance(data, bytes)
        and not _SUSPECT_ESCAPE_BYTES.search(data)
        and not _LONG_DIGITS.search(data)
    ):
        # orjson reads strict RFC 8259 JSON (no NaN or Infinity, no overflowing number, no
        # lone surrogate) as Python's json does, in a fraction of the time; whatever it refuses
        # is read again below, which gives the same value or error as before it was used.
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        value = json.loads(text, parse_constant=_raise_constant, parse_float=_finite_float)
    except json.JSONDecodeError:
        raise
    except ValueError:  # a refused number (rare): parse again, keeping it, to say where
        value = _REFUSED
    else:
        # Raw control characters are invalid JSON, so such text can only come from an escape;
        # look at the strings only when the raw text has one (almost never).
        if not _SUSPECT_ESCAPE.search(text):
            return value
    marked = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    problems = _problems(marked)
    if problems or value is _REFUSED:
        raise UnstorableJSON(problems or [{"field": "", "issue": "cannot be stored"}], text)
    return value


def _problems(value: Any) -> list[dict[str, str]]:
    """Every refused value and unstorable string in `value`, by path, in document order."""
    found: list[dict[str, str]] = []
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _Refused):
            found.append({"field": path, "issue": item.issue})
        elif isinstance(item, str):
            issue = _text_issue(item)
            if issue:
                found.append({"field": path, "issue": issue})
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                shown = _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", key)
                child_path = f"{path}.{shown}" if path else shown
                issue = _text_issue(key)
                if issue:
                    found.append({"field": child_path, "issue": f"the key {issue}"})
                children.append((child_path, child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(item)]))
    return found


def _text_issue(text: str) -> str | None:
    match = _UNSTORABLE.search(text)
    if match is None:
        return None
    if match.group() == "\x00":
        return "contains NUL (\\u0000), which Postgres cannot store in text or jsonb"
    return f"contains a lone surrogate (\\u{ord(match.group()):04x}), which is not valid Unicode"


_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME  # dates, UUIDs and the rest as Flask writes them (_default)
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, strict when reading (`request.get_json()` in any view), orjson when fast.

    Documents are written by orjson when that gives what Flask's own provider writes, byte for
    byte (compact, keys in order, ASCII only): one with other characters (which Flask escapes
    as \\uXXXX), a float (written differently), a big integer or a non-string key, or one
    written indented (debug), is written by Flask's provider instead.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_strict(s)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        fast = self._fast(obj, kwargs)
        return fast.decode("ascii") if fast is not None else super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        if not (self.compact is None and self._app.debug) and self.compact is not False:
            fast = self._fast(obj, {"separators": (",", ":")})
            if fast is not None:
                # Bytes are a body too (the stubs say str).
                return self._app.response_class(  # type: ignore[return-value]
                    fast + b"\n",  # type: ignore[arg-type]
                    mimetype=self.mimetype,
                )
        return super().response(obj)  # type: ignore[return-value]

    def _fast(self, obj: Any, kwargs: dict[str, Any]) -> bytes | None:
        """`obj` as orjson writes it, when that is exactly what json.dumps would; else None."""
        if kwargs and kwargs != {"separators": (",", ":")}:
            return None
        if self.sort_keys or not self.ensure_ascii:
            return None
        try:
            out = orjson.dumps(obj, default=_default, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:  # an integer past 64 bits, a non-string key, ...
            return None
        return out if out.isascii() and not _FLOAT_MISMATCH.search(out) else None


# A number with a fraction or an exponent (or text that looks like one inside a string):
# Python and orjson write some floats differently (1e-05 and 0.00001, 1e+16 and 1e16).
_FLOAT_MISMATCH = re.compile(rb"[:,\[]-?[0-9]+[.eE]")


class Parser(FlaskParser):
    """Malformed requests are 400 VALIDATION_ERROR; 422 is kept for input failing a schema."""

    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        try:
            return loads_strict(req.get_data(cache=True))
        except UnstorableJSON as exc:
            # Not "Invalid JSON body": the JSON is valid, and the client needs the place.
            details = located(exc.problems, "body")
            message = f"Invalid {details['field'] or 'request'}: {details['issue']}"
            raise ValidationError(message, details) from None


class Blueprint(flask_smorest.Blueprint):
    """The project's blueprint class."""

    ARGUMENTS_PARSER = Parser()
