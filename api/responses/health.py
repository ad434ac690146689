"""How the probes answer: `/healthz` and `/readyz`."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from api.errors import ErrorBodySchema, error_body
from api.responses import enum_field
from shared.errors import TaskexecError


class HealthSchema(Schema):
    status = enum_field(["ok"], required=True)


class ReadyChecksSchema(Schema):
    database = enum_field(["ok", "unavailable"], required=True)
    broker = enum_field(["ok", "unavailable"], required=True)


class ReadySchema(Schema):
    status = enum_field(["ready", "unavailable"], required=True)
    checks = fields.Nested(ReadyChecksSchema, required=True)
    error = fields.Nested(ErrorBodySchema, metadata={"description": "When unavailable"})


def readiness(checks: dict[str, str], error: TaskexecError | None) -> dict[str, Any]:
    """The answer of `/readyz`: each check, and the error when one failed."""
    doc: dict[str, Any] = {"status": "unavailable" if error else "ready", "checks": checks}
    if error is not None:
        doc["error"] = error_body(error)
    return doc
