"""JSON Schema validation paths, schema checks, and JSON nesting limits."""

from __future__ import annotations

import json
import time

import pytest

from api.parsing import json_nesting, loads_strict
from shared.validation import (
    MAX_REPORTED_ERRORS,
    check_schema,
    json_depth,
    schema_errors,
    validator_for,
)
from workers.definitions.orders import CALCULATE_ORDER_TOTAL

ORDER_SCHEMA = CALCULATE_ORDER_TOTAL.input_schema
SEED_INPUT = {
    "orderId": "ORD-123",
    "items": [
        {"id": "ITEM-1", "quantity": 2, "price": 10.99},
        {"id": "ITEM-2", "quantity": 1, "price": 24.99},
    ],
}


def fields_of(instance: object, schema: dict = ORDER_SCHEMA) -> list[str]:
    return [e["field"] for e in schema_errors(schema, instance)]


def test_the_seed_input_passes():
    assert schema_errors(ORDER_SCHEMA, SEED_INPUT) == []


def test_a_wrong_type_is_reported_at_its_path():
    bad = {**SEED_INPUT, "items": [{"id": "ITEM-1", "quantity": 2, "price": "cheap"}]}
    assert schema_errors(ORDER_SCHEMA, bad) == [
        {"field": "$.items[0].price", "issue": "'cheap' is not of type 'number'"}
    ]


def test_a_missing_property_is_reported_at_its_own_path():
    bad = {"items": [{"id": "ITEM-1"}]}
    assert fields_of(bad) == ["$.items[0].price", "$.items[0].quantity", "$.orderId"]
    issues = [e["issue"] for e in schema_errors(ORDER_SCHEMA, bad)]
    assert issues[0] == "'price' is a required property"


def test_two_subschemas_requiring_the_same_property():
    schema = {"allOf": [{"required": ["x"]}, {"required": ["y", "x"]}]}
    assert fields_of({}, schema) == ["$.x", "$.x", "$.y"]


def test_errors_come_in_document_order_with_numeric_indexes():
    bad = {"orderId": 7, "items": [{"id": "i", "quantity": "x", "price": 1}] * 12}
    fields = fields_of(bad)
    assert fields[:3] == ["$.items[0].quantity", "$.items[1].quantity", "$.items[2].quantity"]
    assert fields[11] == "$.items[11].quantity"
    assert fields[-1] == "$.orderId"


def test_the_root_and_odd_names():
    assert fields_of([], ORDER_SCHEMA) == ["$"]
    schema = {"type": "object", "properties": {"a b": {"type": "string"}, "é": {"type": "string"}}}
    assert fields_of({"a b": 1, "é": 2}, schema) == ['$["a b"]', '$["é"]']


def test_the_number_of_reported_errors_is_bounded():
    bad = {"orderId": "o", "items": [{"id": 1, "quantity": "x", "price": "y"}] * 5000}
    assert len(schema_errors(ORDER_SCHEMA, bad)) == MAX_REPORTED_ERRORS


def test_constraints_beyond_type():
    bad = {**SEED_INPUT, "items": [{"id": "i", "quantity": -1, "price": 1}]}
    assert schema_errors(ORDER_SCHEMA, bad) == [
        {"field": "$.items[0].quantity", "issue": "-1 is less than the minimum of 0"}
    ]


def test_check_schema_rejects_an_invalid_schema():
    check_schema(ORDER_SCHEMA)
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        check_schema({"type": "no-such-type"})
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        check_schema({"properties": {"a": {"minimum": "zero"}}})


def test_validators_are_cached_by_content():
    reordered = dict(reversed(list(ORDER_SCHEMA.items())))
    assert validator_for(ORDER_SCHEMA) is validator_for(reordered)


@pytest.mark.parametrize(
    ("value", "depth"),
    [(1, 0), ("x", 0), ({}, 1), ([], 1), ({"a": [1, {"b": []}]}, 4), ([[[[]]], [1]], 4)],
)
def test_json_depth(value, depth):
    assert json_depth(value, limit=100) == depth


def test_json_depth_stops_early_past_the_limit():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert json_depth(deep, limit=10) == 11


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"", 0),
        (b"5", 0),
        (b'"[[[["', 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[", "b": [1, {"c": "\\"]"}]}', 3),  # brackets in strings, escaped quotes
        (b'[["x\\\\"], ["]"]]', 2),  # an escaped backslash ends the string
        (b"[" * 100 + b"]" * 100, 100),
        (b"[]" * 1000, 1),
        (b'{"a":\n "b\\u005b"}', 1),
    ],
)
def test_json_nesting(raw, depth):
    assert json_nesting(raw) == depth


def test_json_nesting_is_linear_on_hostile_input():
    # An unterminated string full of escaped quotes once took quadratic time (hours at 1 MiB).
    hostile = [b'"' + b'\\"' * 500_000, b"[]" * 500_000, b"[" * 1_000_000, b'"a' * 500_000]
    started = time.monotonic()
    for raw in hostile:
        json_nesting(raw)
    assert time.monotonic() - started < 3  # milliseconds in practice; generous for busy CI


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        '{"a": Infinity}',
        "[-Infinity]",
        "1e999",
        "[-1e400]",
        "1" * 5000,
        r'{"a": "\u0000"}',
        r'{"\u0000": 1}',
        r'["\ud800"]',
        r'["x\udfff"]',
        r'["\ud83d"]',
        "{",
    ],
)
def test_loads_strict_refuses_what_postgres_cannot_store(text):
    with pytest.raises(json.JSONDecodeError):
        loads_strict(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": [1, 2.5, -3e10, true, null]}', {"a": [1, 2.5, -3e10, True, None]}),
        (r'["\ud83d\ude00"]', ["\U0001f600"]),  # a surrogate pair is one character
        (r'["a\\u0000"]', ["a\\u0000"]),  # an escaped backslash, then text
        ("1" * 4000, int("1" * 4000)),
        (b'{"caf\xc3\xa9": 1}', {"caf\u00e9": 1}),
    ],
)
def test_loads_strict_accepts_ordinary_json(text, value):
    assert loads_strict(text) == value


def test_loads_strict_refuses_invalid_utf8():
    with pytest.raises(UnicodeDecodeError):
        loads_strict(b'["\xff"]')
