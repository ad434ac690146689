"""How the API's responses look on the wire: one module per resource, each schema above its dict.

Views return the dicts the builders here make, as they are; the marshmallow schemas only
document them in OpenAPI (no serializing on the hot path), and tests/api/test_openapi.py checks
real responses against them. `tasks`, `definitions` and `health` speak the seed's camelCase
with RFC 3339 UTC times; `cortex` speaks Cortex's snake_case (seed 003).
"""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate

from shared.status import Status
from shared.task_document import environment, rfc3339  # noqa: F401 - re-exported

STATUSES = [s.value for s in Status]


def time_field(description: str = "RFC 3339 UTC", **kw: Any) -> fields.String:
    """A date-time string field."""
    return fields.String(metadata={"format": "date-time", "description": description}, **kw)


def enum_field(values: list[str], **kw: Any) -> fields.String:
    """A string field that is one of `values`."""
    return fields.String(validate=validate.OneOf(values), **kw)


#: Only null: 3.0.3's `nullable` adds null to a declared type, and the enum keeps nothing else.
_NULL: dict[str, Any] = {"type": "object", "nullable": True, "enum": [None]}


def nullable(schema_name: str, **kw: Any) -> fields.Raw:
    """A registered schema or null, in a form OpenAPI 3.0.3 validators and generators agree on.

    apispec's own form for a nullable Nested, `anyOf: [{type: object, nullable}, {$ref}]`,
    admits any object (generated clients then parse every value as an empty model), and
    `allOf: [{$ref}]` with `nullable` admits no null under 3.0.3's reading of `nullable`.
    """
    return fields.Raw(metadata={"anyOf": [schema_name, _NULL]}, **kw)
