"""orjson in the JSON provider: the same values, errors and bytes as Python's json gave."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from api.parsing import JSONProvider, loads_strict

BODIES = [
    b'{"taskDefinitionId": "echo", "input": {"message": "hello", "n": 1}}',
    b'{"a": 1.5, "b": -0.0, "c": 1e-7, "d": 12345678901234567890123, "e": [true, false, null]}',
    b'{"big": 1' + b"0" * 30 + b"}",
    b'{"huge": 1e400}',
    b'{"nan": NaN}',
    b'{"inf": -Infinity}',
    b'{"nul": "a\\u0000b"}',
    b'{"lone": "\\ud800"}',
    b'{"pair": "\\ud83d\\ude00", "raw": "\xc3\xa9"}',
    b'{"dup": 1, "dup": 2}',
    b"[1, 2,]",
    b'{"a": 1',
    b"\xef\xbb\xbf{}",
    b"\xff{}",
    b'"\x01"',
    b" [ ] ",
    b"",
    b'{"id": "12345678901234567890"}',
]


def outcome(data: Any) -> tuple[str, Any]:
    try:
        return "value", loads_strict(data)
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("body", BODIES)
def test_bytes_read_as_the_json_module_reads_them(body: bytes) -> None:
    # Text always takes Python's json (the path before orjson); bytes try orjson first.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        assert outcome(body)[0] == "UnicodeDecodeError"
        return
    got, expected = outcome(body), outcome(text)
    assert got[0] == expected[0]
    if got[0] == "value":
        assert json.dumps(got[1]) == json.dumps(expected[1])  # types too (int stays int)
    else:
        assert got[1] == expected[1]


def documents() -> list[Any]:
    rng = random.Random(7)
    floats = [10.0**e for e in range(-8, 20)] + [rng.uniform(-1e6, 1e6) for _ in range(50)]
    return [
        {"id": str(uuid.uuid4()), "status": "PENDING", "createdAt": "2026-12-06T14:00:00.000Z"},
        {"items": [{"index": 0, "error": {"code": "NOT_FOUND", "details": {}}}]},
        {"text": "é ü 中 \U0001f600", "ctl": '\x01\n\t"'},
        {"floats": floats, "ints": [0, -1, 2**63 - 1, -(2**63), 2**64, 10**30]},
        {"when": datetime(2026, 12, 6, 14, 0, tzinfo=UTC), "uid": uuid.uuid4()},
        {"dec": Decimal("1.10")},
        {1: "int key"},
        [None, True, False, "", {}, []],
    ]


@pytest.mark.parametrize("doc", documents())
def test_documents_are_written_byte_for_byte_as_before(app, doc: Any) -> None:
    provider = app.json
    assert isinstance(provider, JSONProvider)
    with app.app_context():
        # What Flask's own provider writes: json.dumps with Flask's defaults, compact.
        expected = super(JSONProvider, provider).dumps(doc, separators=(",", ":"))
        assert provider.dumps(doc, separators=(",", ":")) == expected
        assert provider.response(doc).get_data() == expected.encode() + b"\n"


def test_a_plain_document_takes_orjson(app) -> None:
    with app.app_context():
        assert app.json._fast({"id": str(uuid.uuid4()), "status": "PENDING"}, {}) is not None
        assert app.json._fast({"x": 0.5}, {}) is None  # a float: Flask's provider writes it
