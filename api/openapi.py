"""The OpenAPI document: headers, links, examples, the error responses, and the `Api` serving it.

Views keep returning their own JSON; the schemas of api/responses only describe it (no
serializing on the hot path). A view documents itself with
`@blp.doc(operationId=..., responses=responses({200: ok(TaskSchema, "The task")}, 404))`, which
adds the errors every authenticated operation can answer (400, 401, 403, 429, 500, 503).
"""

from __future__ import annotations

from typing import Any

import flask_smorest
from marshmallow import Schema
from werkzeug.routing import Map, Rule

from api import pagination
from api.errors import HTTP_ERRORS, ErrorBodySchema, ErrorSchema
from api.responses import cortex, definitions, health, tasks

#: Registered leaves first, so each keeps its name when a later one nests it.
SCHEMAS: list[type[Schema]] = [
    ErrorBodySchema,
    tasks.RetryPolicyOutSchema,
    tasks.TaskErrorSchema,
    tasks.ProgressSchema,
    tasks.TaskExecutionConfigSchema,
    tasks.ExecutionMetadataSchema,
    tasks.CancellationSchema,
    tasks.AttemptSchema,
    tasks.TaskSummarySchema,
    tasks.TaskSchema,
    tasks.TaskCreatedSchema,
    pagination.TaskPaginationSchema,
    tasks.TaskListSchema,
    tasks.BulkAcceptedSchema,
    tasks.BulkRefusedSchema,
    tasks.BulkResultSchema,
    tasks.CancelResultSchema,
    tasks.CancelRefusedSchema,
    tasks.BulkCancelResultSchema,
    tasks.TaskRetriedSchema,
    tasks.RetryRefusedSchema,
    tasks.BulkRetryResultSchema,
    definitions.DefinitionSummarySchema,
    definitions.DefinitionExecutionConfigSchema,
    definitions.DefinitionSchema,
    pagination.PaginationSchema,
    definitions.DefinitionListSchema,
    cortex.JobSubmittedSchema,
    cortex.JobStatusSchema,
    cortex.ApiSpecDefinitionSchema,
    cortex.ComputeSchema,
    cortex.NetworkingSchema,
    cortex.ApiSpecSchema,
    cortex.JobResponseSchema,
    cortex.TaskApiSchema,
    cortex.StoppedSchema,
    health.HealthSchema,
    health.ReadyChecksSchema,
    health.ReadySchema,
]

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
_INTEGER = {"type": "integer"}
HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": {
        "description": "Requests allowed in the current window (when rate limiting is on)",
        "schema": _INTEGER,
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in the current window",
        "schema": _INTEGER,
    },
    "X-RateLimit-Reset": {"description": "Unix time the window resets at", "schema": _INTEGER},
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": _INTEGER},
    "WWW-Authenticate": {"description": "The accepted schemes", "schema": {"type": "string"}},
    "Location": {"description": "The new task's URL", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "Present on an idempotent replay",
        "schema": {"type": "string", "enum": ["true"]},
    },
}

_TASK_ID = {"task_id": "$response.body#/id"}
#: Where a new task's id leads (OpenAPI links, which clients and schemathesis follow).
TASK_LINKS: dict[str, Any] = {
    "GetTask": {"operationId": "getTask", "parameters": _TASK_ID},
    "GetTaskLogs": {"operationId": "getTaskLogs", "parameters": _TASK_ID},
    "CancelTask": {"operationId": "cancelTask", "parameters": _TASK_ID},
}
_JOB = {"api_name": "$request.path.api_name", "job_id": "$response.body#/job_id"}
#: Where a new Task API job leads.
JOB_LINKS: dict[str, Any] = {
    "GetJob": {"operationId": "getJob", "parameters": _JOB},
    "StopJob": {"operationId": "stopJob", "parameters": _JOB},
}

#: The optional header of `POST /api/v1/tasks` (a bulk request takes keys on its items).
IDEMPOTENCY_KEY: dict[str, Any] = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "description": "Replays within TASKEXEC_IDEMPOTENCY_TTL return the original task (200)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}

#: Request examples (the seed's order), shown in the docs and sent by schemathesis.
SUBMIT_TASK_EXAMPLE: dict[str, Any] = {
    "taskDefinitionId": "calculate-order-total",
    "workflowInstanceId": "order-workflow-789",
    "input": {
        "orderId": "ORD-123",
        "items": [
            {"id": "ITEM-1", "quantity": 2, "price": 10.99},
            {"id": "ITEM-2", "quantity": 1, "price": 24.99},
        ],
    },
    "priority": "MEDIUM",
    "executionConfig": {
        "timeout": 60000,
        "retryPolicy": {"maxRetries": 3, "retryInterval": 1000, "backoffMultiplier": 2},
    },
}
SUBMIT_TASKS_EXAMPLE: dict[str, Any] = {
    "tasks": [
        {"taskDefinitionId": "echo", "input": {"hello": "world"}},
        {"taskDefinitionId": "echo", "input": {"n": 2}, "idempotencyKey": "batch-7-item-2"},
    ]
}
SUBMIT_JOB_EXAMPLE: dict[str, Any] = {"timeout": 60, "config": {"hello": "world"}}

#: What every authenticated operation may answer besides its own errors.
COMMON_ERRORS = (400, 401, 403, 429, 500, 503)


def ok(
    schema: type[Schema] | dict[str, Any],
    description: str,
    headers: tuple[str, ...] = (),
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe a success response (rate-limit headers included) without serializing it."""
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        "headers": {name: name for name in (*RATE_HEADERS, *headers)},
    }
    if links:
        response["links"] = links
    return response


def one_of(*names: str) -> dict[str, Any]:
    """A response schema that is one of several registered schemas."""
    return {"oneOf": list(names)}


def responses(success: dict[int, dict[str, Any]], *errors: int) -> dict[int, Any]:
    """The `responses` of an authenticated operation: `success`, `errors` and the common ones."""
    documented: dict[int, Any] = dict(success)
    for status in sorted({*errors, *COMMON_ERRORS}):
        documented[status] = HTTP_ERRORS[status].component
    return documented


class Api(flask_smorest.Api):
    """flask-smorest's Api with our error envelope; `register` adds the rest of the document."""

    ERROR_SCHEMA = ErrorSchema
    # Every operation lists the statuses it answers; a catch-all would hide undocumented ones.
    DEFAULT_ERROR_RESPONSE_NAME = None


def spec_kwargs() -> dict[str, Any]:
    """The root of the document: either credential is accepted on every operation by default."""
    return {
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            }
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
    }


def register(api: Api) -> None:
    """Add our headers, error responses, schemas and the probes to `api`'s document.

    Call it before registering blueprints, so their operations find these components.
    """
    components = api.spec.components
    for name, header in HEADERS.items():
        components.header(name, header)
    for error in HTTP_ERRORS.values():
        if error.component is None:
            continue
        response = {
            "description": f"{error.code}: {error.description}",
            "content": {"application/json": {"schema": ErrorSchema}},
            "headers": {name: name for name in (*RATE_HEADERS, *error.headers)},
        }
        # Lazy, as flask-smorest's own (which these replace): only those an operation refers
        # to are listed.
        components.response(error.component, response, lazy=True)
    for schema in SCHEMAS:
        name = schema.__name__.removesuffix("Schema")
        if name not in components.schemas:
            components.schema(name, schema=schema)
    components.security_scheme(
        "MetricsToken",
        {"type": "http", "scheme": "bearer", "description": "TASKEXEC_METRICS_TOKEN"},
    )
    _document_probes(api)


def _document_probes(api: Api) -> None:
    """Describe the routes outside the flask-smorest blueprints: probes and /metrics."""
    probes = {
        "/healthz": {
            "summary": "Liveness: the process answers",
            "responses": {200: _public(health.HealthSchema, "Alive")},
        },
        "/readyz": {
            "summary": "Readiness: Postgres and Redis are reachable",
            "responses": {
                200: _public(health.ReadySchema, "Ready"),
                503: _public(health.ReadySchema, "A backing service is unreachable"),
            },
        },
        "/metrics": {
            "summary": "Prometheus metrics (text format)",
            "description": "Needs `Authorization: Bearer <TASKEXEC_METRICS_TOKEN>` when "
            "the server sets that token.",
            "security": [{}, {"MetricsToken": []}],
            "responses": {
                200: {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                401: HTTP_ERRORS[401].component,
            },
        },
    }
    for path, operation in probes.items():
        operation.setdefault("security", [])
        operation["tags"] = ["operations"]
        operation["operationId"] = path.strip("/")
        api.spec.path(rule=_bound_rule(path), operations={"get": operation}, parameters=[])


def _bound_rule(path: str) -> Rule:
    """A URL rule bound to a map, as flask-smorest's path helper reads one."""
    rule = Rule(path)
    Map([rule])
    return rule


def _public(schema: type[Schema], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
