"""JSON Schema validation of task input and output, with compiled validators cached."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

MAX_REPORTED_ERRORS = 20


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Draft202012Validator:
    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    """Return a compiled validator for `schema` (cached by its canonical JSON)."""
    return _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))


def schema_errors(schema: dict[str, Any], instance: Any) -> list[dict[str, str]]:
    """List where and why `instance` fails `schema` (empty when it passes)."""
    errors = sorted(
        validator_for(schema).iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))
    )
    return [
        {"field": _path(error.absolute_path), "issue": error.message}
        for error in errors[:MAX_REPORTED_ERRORS]
    ]


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError if `schema` is not a valid JSON Schema."""
    try:
        validator_for(schema)
    except SchemaError as exc:
        raise ValueError(f"invalid JSON Schema: {exc.message}") from exc


def _path(parts: Any) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def json_depth(value: Any, limit: int) -> int:
    """Return the nesting depth of `value`, stopping early once it exceeds `limit`."""
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        if depth > limit:
            return depth
        stack.extend((child, level + 1) for child in children)
    return depth
