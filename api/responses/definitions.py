"""How task definitions look on the wire, as in the seed."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from api.pagination import PaginationSchema
from api.responses import enum_field, rfc3339, time_field
from api.responses.tasks import RetryPolicyOutSchema, retry_policy_json
from shared.status import TaskType
from shared.store import DefinitionRow


class DefinitionSummarySchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String(required=True)
    type = enum_field([t.value for t in TaskType], required=True)
    version = fields.String(required=True)


def definition_summary(row: DefinitionRow) -> dict[str, Any]:
    """The fields of a definition in a list."""
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "type": row.type,
        "version": row.version,
    }


class DefinitionListSchema(Schema):
    items = fields.List(fields.Nested(DefinitionSummarySchema), required=True)
    pagination = fields.Nested(PaginationSchema, required=True)


class DefinitionExecutionConfigSchema(Schema):
    executor = fields.String(required=True, metadata={"description": "The worker queue"})
    securityContext = fields.Dict(required=True)
    resourceRequirements = fields.Dict(required=True)


class DefinitionSchema(DefinitionSummarySchema):
    """A task definition in full, as in the seed."""

    inputSchema = fields.Dict(required=True, metadata={"description": "JSON Schema"})
    outputSchema = fields.Dict(required=True, metadata={"description": "JSON Schema"})
    timeout = fields.Integer(required=True, metadata={"description": "Milliseconds"})
    retryPolicy = fields.Nested(RetryPolicyOutSchema, required=True)
    executionConfig = fields.Nested(DefinitionExecutionConfigSchema, required=True)
    createdAt = time_field(required=True)
    updatedAt = time_field(required=True)
    defaultConfig = fields.Dict(required=True, metadata={"description": "A Task API's config"})
    versions = fields.List(fields.String(), metadata={"description": "Oldest first"})
    concurrencyLimit = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "At most this many of its tasks RUNNING at once; null: no limit"},
    )


def definition_json(row: DefinitionRow, versions: list[str] | None = None) -> dict[str, Any]:
    """The full definition, shaped as in the seed; `versions` when the caller read them."""
    doc = definition_summary(row)
    doc.update(
        {
            "inputSchema": row.input_schema,
            "outputSchema": row.output_schema,
            "timeout": row.timeout_ms,
            "retryPolicy": retry_policy_json(row.retry_policy),
            "executionConfig": {
                "executor": row.executor,
                "securityContext": row.security_context,
                "resourceRequirements": row.resource_requirements,
            },
            "createdAt": rfc3339(row.created_at),
            "updatedAt": rfc3339(row.updated_at),
            # Not in the seed: the config a Task API job starts from (seed 003).
            "defaultConfig": row.default_config,
            "concurrencyLimit": row.concurrency_limit,
        }
    )
    if versions is not None:
        doc["versions"] = versions
    return doc
