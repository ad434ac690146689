"""The OpenAPI document: response schemas, error envelope, headers, and the `Api` serving it.

Views keep returning their own JSON; the schemas here only describe it (no serializing on the
hot path). A view documents itself with
`@blp.doc(operationId=..., responses=responses({200: ok(TaskSchema, "The task")}, 404))`, which
adds the errors every authenticated operation can answer (400, 401, 403, 429, 500, 503).
"""

from __future__ import annotations

from typing import Any

import flask_smorest
from marshmallow import Schema, fields, validate
from werkzeug.routing import Map, Rule

from api.errors import HTTP_CODES
from shared.status import ErrorKind, Priority, Status, TaskType

_STATUSES = [s.value for s in Status]
_CORTEX_STATUSES = [
    "status_unknown",
    "status_running",
    "status_succeeded",
    "status_unexpected_error",
    "status_worker_error",
    "status_worker_oom",
    "status_timed_out",
    "status_stopped",
]
ERROR_CODES = sorted({code for code, _ in HTTP_CODES.values()} | {"INTERNAL_ERROR"})


def _time(description: str = "RFC 3339 UTC", **kw: Any) -> fields.String:
    return fields.String(metadata={"format": "date-time", "description": description}, **kw)


def _enum(values: list[str], **kw: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(values), **kw)


#: Only null: 3.0.3's `nullable` adds null to a declared type, and the enum keeps nothing else.
_NULL: dict[str, Any] = {"type": "object", "nullable": True, "enum": [None]}


def _nullable(schema_name: str, **kw: Any) -> fields.Raw:
    """A registered schema or null, in a form OpenAPI 3.0.3 validators and generators agree on.

    apispec's own form for a nullable Nested, `anyOf: [{type: object, nullable}, {$ref}]`,
    admits any object (generated clients then parse every value as an empty model), and
    `allOf: [{$ref}]` with `nullable` admits no null under 3.0.3's reading of `nullable`.
    """
    return fields.Raw(metadata={"anyOf": [schema_name, _NULL]}, **kw)


# ------------------------------------------------------------------ errors


class ErrorBodySchema(Schema):
    code = _enum(ERROR_CODES, required=True)
    message = fields.String(required=True)
    details = fields.Dict(required=True, metadata={"description": "e.g. {field, issue}"})


class ErrorSchema(Schema):
    """Every error response: `{"error": {"code", "message", "details"}}`."""

    error = fields.Nested(ErrorBodySchema, required=True)


# ------------------------------------------------------------------ tasks


class RetryPolicyOutSchema(Schema):
    maxRetries = fields.Integer(required=True)
    retryInterval = fields.Integer(required=True, metadata={"description": "Milliseconds"})
    backoffMultiplier = fields.Float(required=True)
    retryOnTimeout = fields.Boolean()
    jitter = fields.Float()


class TaskErrorSchema(Schema):
    """Why a task failed (or was cancelled)."""

    code = fields.String(required=True)
    message = fields.String(required=True)
    kind = _enum([k.value for k in ErrorKind], required=True)
    details = fields.Raw()


class ProgressSchema(Schema):
    fraction = fields.Float(required=True, metadata={"minimum": 0, "maximum": 1})
    message = fields.String(required=True)


class TaskExecutionConfigSchema(Schema):
    timeout = fields.Integer(required=True, metadata={"description": "Milliseconds per attempt"})
    retryPolicy = fields.Nested(RetryPolicyOutSchema, required=True)
    executor = fields.String(required=True)


class ExecutionMetadataSchema(Schema):
    startTime = _time(required=True, allow_none=True)
    endTime = _time(required=True, allow_none=True)
    duration = fields.Integer(required=True, allow_none=True, metadata={"description": "ms"})
    executionEnvironment = fields.String(
        required=True, allow_none=True, metadata={"description": "<worker host>:<process id>"}
    )
    attempts = fields.Integer(required=True, metadata={"description": "Attempts started"})


class CancellationSchema(Schema):
    requestedAt = _time(required=True)
    reason = fields.String(required=True, allow_none=True)
    by = fields.String(required=True, allow_none=True)
    force = fields.Boolean(required=True)


class AttemptSchema(Schema):
    attempt = fields.Integer(required=True)
    status = fields.String(required=True, metadata={"description": "How the attempt ended"})
    startTime = _time(required=True, allow_none=True)
    endTime = _time(required=True, allow_none=True)
    executionEnvironment = fields.String(required=True, allow_none=True)
    error = _nullable("TaskError", required=True)


class TaskSummarySchema(Schema):
    """A task in a list."""

    id = fields.String(required=True, metadata={"format": "uuid"})
    taskDefinitionId = fields.String(required=True)
    workflowInstanceId = fields.String(required=True, allow_none=True)
    status = _enum(_STATUSES, required=True)
    type = _enum([t.value for t in TaskType], required=True)
    priority = _enum([p.value for p in Priority], required=True)
    createdAt = _time(required=True)
    updatedAt = _time(required=True)


class TaskSchema(TaskSummarySchema):
    """A task in full, with its execution metadata and attempt history."""

    definitionVersion = fields.String(required=True)
    input = fields.Dict(required=True)
    output = fields.Raw(required=True, allow_none=True)
    error = _nullable("TaskError", required=True)
    progress = _nullable("Progress", required=True)
    executionConfig = fields.Nested(TaskExecutionConfigSchema, required=True)
    executionMetadata = fields.Nested(ExecutionMetadataSchema, required=True)
    cancellation = fields.Nested(CancellationSchema, metadata={"description": "Once requested"})
    attempts = fields.List(fields.Nested(AttemptSchema))


class TaskCreatedSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    status = _enum(_STATUSES, required=True)
    createdAt = _time(required=True)


class TaskPaginationSchema(Schema):
    page = fields.Integer(
        required=True, allow_none=True, metadata={"description": "Null with a cursor"}
    )
    limit = fields.Integer(required=True)
    totalItems = fields.Integer(required=True)
    totalPages = fields.Integer(required=True)
    totalItemsExact = fields.Boolean(required=True, metadata={"description": "False: an estimate"})


class TaskListSchema(Schema):
    items = fields.List(fields.Nested(TaskSummarySchema), required=True)
    pagination = fields.Nested(TaskPaginationSchema, required=True)
    nextCursor = fields.String(metadata={"description": "Pass as `cursor` for the next page"})


class BulkAcceptedSchema(Schema):
    index = fields.Integer(required=True)
    id = fields.String(required=True, metadata={"format": "uuid"})
    status = _enum(_STATUSES, required=True)
    replayed = fields.Boolean(metadata={"description": "An idempotent replay"})


class BulkRefusedSchema(Schema):
    index = fields.Integer(required=True)
    error = fields.Nested(ErrorBodySchema, required=True)


class BulkResultSchema(Schema):
    items = fields.List(
        fields.Raw(metadata={"oneOf": ["BulkAccepted", "BulkRefused"]}), required=True
    )


class CancelResultSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    status = _enum([Status.CANCELLED.value], required=True)
    updatedAt = _time(required=True)


class CancelRefusedSchema(Schema):
    id = fields.String(required=True)
    error = fields.Nested(ErrorBodySchema, required=True)


class BulkCancelResultSchema(Schema):
    items = fields.List(
        fields.Raw(metadata={"oneOf": ["CancelResult", "CancelRefused"]}), required=True
    )


# ------------------------------------------------------------------ definitions


class DefinitionSummarySchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String(required=True)
    type = _enum([t.value for t in TaskType], required=True)
    version = fields.String(required=True)


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
    createdAt = _time(required=True)
    updatedAt = _time(required=True)
    defaultConfig = fields.Dict(required=True, metadata={"description": "A Task API's config"})
    versions = fields.List(fields.String(), metadata={"description": "Oldest first"})


class PaginationSchema(Schema):
    page = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    totalItems = fields.Integer(required=True)
    totalPages = fields.Integer(required=True)


class DefinitionListSchema(Schema):
    items = fields.List(fields.Nested(DefinitionSummarySchema), required=True)
    pagination = fields.Nested(PaginationSchema, required=True)


# ------------------------------------------------------------------ Cortex Task APIs


class _JobSchema(Schema):
    job_id = fields.String(required=True, metadata={"format": "uuid"})
    api_name = fields.String(required=True)
    kind = _enum(["TaskAPI"], required=True)
    workers = fields.Integer(required=True)
    config = fields.Dict(required=True)
    api_id = fields.String(required=True, metadata={"description": "<api name>-<version>"})
    created_time = _time(required=True)


class JobSubmittedSchema(_JobSchema):
    timeout = fields.Integer(required=True, allow_none=True, metadata={"description": "Seconds"})


class JobStatusSchema(_JobSchema):
    status = _enum(_CORTEX_STATUSES, required=True)
    start_time = _time(required=True, allow_none=True)
    end_time = _time("Only once the job has finished")


class ApiSpecDefinitionSchema(DefinitionSchema):
    config = fields.Dict(required=True, metadata={"description": "The default config"})


class ComputeSchema(Schema):
    cpu = fields.Raw(required=True, allow_none=True)
    gpu = fields.Integer(required=True)
    mem = fields.Raw(required=True, allow_none=True)


class NetworkingSchema(Schema):
    endpoint = fields.String(required=True)


class ApiSpecSchema(Schema):
    name = fields.String(required=True)
    kind = _enum(["TaskAPI"], required=True)
    id = fields.String(required=True)
    definition = fields.Nested(ApiSpecDefinitionSchema, required=True)
    compute = fields.Nested(ComputeSchema, required=True)
    networking = fields.Nested(NetworkingSchema, required=True)


class JobResponseSchema(Schema):
    """`GET /api/v1/task-apis/{apiName}?jobID=` and `.../{apiName}/{jobId}`."""

    job_status = fields.Nested(JobStatusSchema, required=True)
    endpoint = fields.String(required=True)
    api_spec = fields.Nested(ApiSpecSchema, required=True)


class TaskApiSchema(Schema):
    """`GET /api/v1/task-apis/{apiName}` without a jobID: the API and its jobs."""

    api_spec = fields.Nested(ApiSpecSchema, required=True)
    endpoint = fields.String(required=True)
    task_job_statuses = fields.List(fields.Nested(JobStatusSchema), required=True)
    recent_job_statuses = fields.List(fields.Nested(JobStatusSchema), required=True)


class StoppedSchema(Schema):
    message = fields.String(required=True, metadata={"example": "stopped job <job_id>"})


# ------------------------------------------------------------------ health


class HealthSchema(Schema):
    status = _enum(["ok"], required=True)


class ReadyChecksSchema(Schema):
    database = _enum(["ok", "unavailable"], required=True)
    broker = _enum(["ok", "unavailable"], required=True)


class ReadySchema(Schema):
    status = _enum(["ready", "unavailable"], required=True)
    checks = fields.Nested(ReadyChecksSchema, required=True)
    error = fields.Nested(ErrorBodySchema, metadata={"description": "When unavailable"})


#: Registered leaves first, so each keeps its name when a later one nests it.
SCHEMAS: list[type[Schema]] = [
    ErrorBodySchema,
    RetryPolicyOutSchema,
    TaskErrorSchema,
    ProgressSchema,
    TaskExecutionConfigSchema,
    ExecutionMetadataSchema,
    CancellationSchema,
    AttemptSchema,
    TaskSummarySchema,
    TaskSchema,
    TaskCreatedSchema,
    TaskPaginationSchema,
    TaskListSchema,
    BulkAcceptedSchema,
    BulkRefusedSchema,
    BulkResultSchema,
    CancelResultSchema,
    CancelRefusedSchema,
    BulkCancelResultSchema,
    DefinitionSummarySchema,
    DefinitionExecutionConfigSchema,
    DefinitionSchema,
    PaginationSchema,
    DefinitionListSchema,
    JobSubmittedSchema,
    JobStatusSchema,
    ApiSpecDefinitionSchema,
    ComputeSchema,
    NetworkingSchema,
    ApiSpecSchema,
    JobResponseSchema,
    TaskApiSchema,
    StoppedSchema,
    HealthSchema,
    ReadyChecksSchema,
    ReadySchema,
]


# ------------------------------------------------------------------ responses and headers

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

#: status -> (response component, description, extra headers). 400 keeps flask-smorest's
#: name, which `@blp.arguments` refers to.
ERRORS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: ("BAD_REQUEST", "VALIDATION_ERROR: a malformed body, query, header or URL", ()),
    401: ("UNAUTHORIZED", "UNAUTHORIZED: no valid API key or token", ("WWW-Authenticate",)),
    403: ("FORBIDDEN", "FORBIDDEN: the caller lacks the operation's permission", ()),
    404: ("NOT_FOUND", "NOT_FOUND: no such resource visible to the caller", ()),
    409: ("CONFLICT", "CONFLICT: the resource's state does not allow this", ()),
    413: ("PAYLOAD_TOO_LARGE", "PAYLOAD_TOO_LARGE: the body is over the size limit", ()),
    422: ("UNPROCESSABLE_ENTITY", "VALIDATION_ERROR: the input fails the definition's schema", ()),
    429: ("TOO_MANY_REQUESTS", "RATE_LIMITED: over the caller's rate limit", ("Retry-After",)),
    500: ("INTERNAL_SERVER_ERROR", "INTERNAL_ERROR: a bug; the details are in the server log", ()),
    503: ("SERVICE_UNAVAILABLE", "SERVICE_UNAVAILABLE: a backing service is out", ("Retry-After",)),
}
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
        documented[status] = ERRORS[status][0]
    return documented


def _error_response(description: str, headers: tuple[str, ...]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": ErrorSchema}},
        "headers": {name: name for name in (*RATE_HEADERS, *headers)},
    }


def _bound_rule(path: str) -> Rule:
    """A URL rule bound to a map, as flask-smorest's path helper reads one."""
    rule = Rule(path)
    Map([rule])
    return rule


class Api(flask_smorest.Api):
    """flask-smorest's Api with our error envelope, headers, response schemas and probes."""

    ERROR_SCHEMA = ErrorSchema
    # Every operation lists the statuses it answers; a catch-all would hide undocumented ones.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_responses(self) -> None:
        for name, header in HEADERS.items():
            self.spec.components.header(name, header)
        super()._register_responses()
        for name, description, headers in ERRORS.values():
            # Lazy, as flask-smorest's own: only those an operation refers to are listed.
            self.spec.components.response(name, _error_response(description, headers), lazy=True)

    def _init_spec(self, **options: Any) -> None:
        super()._init_spec(**options)
        for schema in SCHEMAS:
            name = schema.__name__.removesuffix("Schema")
            if name not in self.spec.components.schemas:
                self.spec.components.schema(name, schema=schema)
        self.spec.components.security_scheme(
            "MetricsToken",
            {"type": "http", "scheme": "bearer", "description": "TASKEXEC_METRICS_TOKEN"},
        )
        self._document_probes()

    def _document_probes(self) -> None:
        """Describe the routes outside the flask-smorest blueprints: probes and /metrics."""
        probes = {
            "/healthz": {
                "summary": "Liveness: the process answers",
                "responses": {200: _public(HealthSchema, "Alive")},
            },
            "/readyz": {
                "summary": "Readiness: Postgres and Redis are reachable",
                "responses": {
                    200: _public(ReadySchema, "Ready"),
                    503: _public(ReadySchema, "A backing service is unreachable"),
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
                    401: ERRORS[401][0],
                },
            },
        }
        for path, operation in probes.items():
            operation.setdefault("security", [])
            operation["tags"] = ["operations"]
            operation["operationId"] = path.strip("/")
            self.spec.path(rule=_bound_rule(path), operations={"get": operation}, parameters=[])


def _public(schema: type[Schema], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
