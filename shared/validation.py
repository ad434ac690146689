"""JSON Schema validation of task input and output, with compiled validators cached."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as JsonSchemaError

MAX_REPORTED_ERRORS = 20
MAX_COLLECTED_ERRORS = 1000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Draft202012Validator:
    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


# The validator of each schema object seen lately, by identity: a definition's schema is the
# same dict for as long as the definition cache keeps its row, and writing it out as canonical
# JSON on every request cost more than validating a small input. The entry holds the schema
# itself, so its id cannot be reused by another object while the entry lives. Schemas are
# never changed in place once read.
_BY_IDENTITY: dict[int, tuple[dict[str, Any], Draft202012Validator]] = {}


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    """Return a compiled validator for `schema` (cached by identity, then by canonical JSON)."""
    entry = _BY_IDENTITY.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    if len(_BY_IDENTITY) >= 512:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(schema)] = (schema, validator)
    return validator


def schema_errors(schema: dict[str, Any], instance: Any) -> list[dict[str, str]]:
    """List where and why `instance` fails `schema` (empty when it passes), in document order.

    Each entry is {"field": "$.items[0].price", "issue": "..."}; a missing required property
    is reported at its own path, not its parent's.
    """
    validator = validator_for(schema)
    if validator.is_valid(instance):  # the common case, in half the time of listing errors
        return []
    # Bounded: a hostile 1 MiB input must not make us build millions of error objects.
    found = itertools.islice(validator.iter_errors(instance), MAX_COLLECTED_ERRORS)
    located = sorted(_located(found), key=lambda pair: _order(pair[0]))
    return [
        {"field": _path(parts), "issue": error.message}
        for parts, error in located[:MAX_REPORTED_ERRORS]
    ]


def _located(errors: Iterable[JsonSchemaError]) -> Iterator[tuple[list[Any], JsonSchemaError]]:
    """Pair each error with the path it is about."""
    # jsonschema yields one `required` error per missing property, in the order the schema
    # lists them; count per (place, subschema) to know which property each one is about.
    seen: dict[tuple[Any, ...], int] = {}
    for error in errors:
        parts = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [p for p in error.validator_value if p not in error.instance]
            key = (*parts, "|", *error.absolute_schema_path)
            index = seen.get(key, 0)
            seen[key] = index + 1
            if index < len(missing):
                parts.append(missing[index])
        yield parts, error


def _order(parts: list[Any]) -> list[tuple[int, int, str]]:
    # Array indexes sort as numbers ($.items[2] before $.items[10]), never against names.
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in parts]


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError if `schema` is not a valid JSON Schema."""
    try:
        validator_for(schema)
    except SchemaError as exc:
        raise ValueError(f"invalid JSON Schema: {exc.message}") from exc


def _path(parts: Iterable[Any]) -> str:
    """Write a JSONPath such as $.items[0].price (odd names in brackets: $["a b"])."""
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _NAME.match(str(part)):
            text += f".{part}"
        else:
            text += "[" + json.dumps(str(part), ensure_ascii=False) + "]"
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
