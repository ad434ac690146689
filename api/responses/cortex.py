"""How Cortex's Task APIs look on the wire (seed 003): each schema above the dict it describes.

snake_case names, microsecond times and Cortex's job statuses; docs/cortex.md has the mapping.
As everywhere in api/responses, the schemas only document the dicts the views return.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import request, url_for
from marshmallow import Schema, fields

from api.responses import enum_field, time_field
from api.responses.definitions import DefinitionSchema, definition_json
from api.services import services
from shared.status import TERMINAL, ErrorKind, Status
from shared.store import DefinitionRow, Task

KIND = "TaskAPI"
_TERMINAL = frozenset(s.value for s in TERMINAL)
STATUSES = [
    "status_unknown",
    "status_running",
    "status_succeeded",
    "status_unexpected_error",
    "status_worker_error",
    "status_worker_oom",
    "status_timed_out",
    "status_stopped",
]
#: Terminal FAILED tasks map by their error kind; see docs/cortex.md.
_FAILED_BY_KIND = {
    ErrorKind.TASK_ERROR.value: "status_worker_error",
    ErrorKind.OUT_OF_MEMORY.value: "status_worker_oom",
    ErrorKind.WORKER_LOST.value: "status_unexpected_error",
    ErrorKind.INTERNAL.value: "status_unexpected_error",
}
_BY_STATUS = {
    Status.PENDING.value: "status_running",
    Status.RUNNING.value: "status_running",
    Status.RETRYING.value: "status_running",
    Status.COMPLETED.value: "status_succeeded",
    Status.TIMED_OUT.value: "status_timed_out",
    Status.CANCELLED.value: "status_stopped",
}


def cortex_status(status: str, error: Any) -> str:
    """Map a task's status (and, for FAILED, its error kind) to Cortex's job status."""
    if status == Status.FAILED.value:
        kind = error.get("kind") if isinstance(error, dict) else None
        return _FAILED_BY_KIND.get(kind, "status_unknown")  # type: ignore[arg-type]
    return _BY_STATUS.get(status, "status_unknown")


def cortex_time(value: datetime | None) -> str | None:
    """Format a time as Cortex does (RFC 3339 UTC, `Z`), to the microsecond Postgres keeps."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def api_id(definition_id: str, version: str) -> str:
    """Name one version of a Task API: `<definition id>-<definition version>`."""
    return f"{definition_id}-{version}"


def endpoint(api_name: str, external: bool = True) -> str:
    """A Task API's URL: absolute from TASKEXEC_PUBLIC_URL or an allowed Host, else relative."""
    path = url_for("task_apis.get_api", api_name=api_name)
    if not external:
        return path
    settings = services().settings
    if settings.public_url:
        return settings.public_url + path
    if _host_name(request.host) in settings.allowed_hosts.split(","):
        return request.host_url.rstrip("/") + path
    return path


def _host_name(host: str) -> str:
    """The name in a Host header, without its port; empty when it is not one."""
    try:
        return (urlsplit(f"//{host}").hostname or "").lower()
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return ""


# ------------------------------------------------------------------ jobs


class _JobSchema(Schema):
    job_id = fields.String(required=True, metadata={"format": "uuid"})
    api_name = fields.String(required=True)
    kind = enum_field([KIND], required=True)
    workers = fields.Integer(required=True)
    config = fields.Dict(required=True)
    api_id = fields.String(required=True, metadata={"description": "<api name>-<version>"})
    created_time = time_field(required=True)


def _job(task: Task) -> dict[str, Any]:
    return {
        "job_id": str(task.id),
        "api_name": task.task_definition_id,
        "kind": KIND,
        "workers": 1,
        "config": task.input,
        "api_id": api_id(task.task_definition_id, task.definition_version),
    }


class JobSubmittedSchema(_JobSchema):
    timeout = fields.Integer(required=True, allow_none=True, metadata={"description": "Seconds"})


def job_submitted(task: Task, timeout: int | None) -> dict[str, Any]:
    """The answer to `POST /api/v1/task-apis/{apiName}`."""
    return {**_job(task), "timeout": timeout, "created_time": cortex_time(task.created_at)}


class JobStatusSchema(_JobSchema):
    status = enum_field(STATUSES, required=True)
    start_time = time_field(required=True, allow_none=True)
    end_time = time_field("Only once the job has finished")


def job_status(task: Task) -> dict[str, Any]:
    """A task as Cortex's `job_status`; `end_time` only once it has finished."""
    doc = _job(task)
    doc["status"] = cortex_status(task.status, task.error)
    doc["created_time"] = cortex_time(task.created_at)
    doc["start_time"] = cortex_time(task.start_time)
    if task.status in _TERMINAL:
        doc["end_time"] = cortex_time(task.end_time or task.updated_at)
    return doc


class StoppedSchema(Schema):
    message = fields.String(required=True, metadata={"example": "stopped job <job_id>"})


def stopped(task: Task) -> dict[str, Any]:
    """The answer to stopping a job."""
    return {"message": f"stopped job {task.id}"}


# ------------------------------------------------------------------ the API


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
    kind = enum_field([KIND], required=True)
    id = fields.String(required=True)
    definition = fields.Nested(ApiSpecDefinitionSchema, required=True)
    compute = fields.Nested(ComputeSchema, required=True)
    networking = fields.Nested(NetworkingSchema, required=True)


def api_spec(row: DefinitionRow) -> dict[str, Any]:
    """Describe a definition as a Cortex Task API spec (name, kind, id, definition, compute)."""
    resources = row.resource_requirements or {}
    definition = definition_json(row)
    definition["config"] = row.default_config  # Cortex's name for the API-level config
    return {
        "name": row.id,
        "kind": KIND,
        "id": api_id(row.id, row.version),
        "definition": definition,
        "compute": {"cpu": resources.get("cpu"), "gpu": 0, "mem": resources.get("memory")},
        "networking": {"endpoint": endpoint(row.id, external=False)},
    }


class JobResponseSchema(Schema):
    """`GET /api/v1/task-apis/{apiName}?jobID=` and `.../{apiName}/{jobId}`."""

    job_status = fields.Nested(JobStatusSchema, required=True)
    endpoint = fields.String(required=True)
    api_spec = fields.Nested(ApiSpecSchema, required=True)


def job_response(row: DefinitionRow, task: Task) -> dict[str, Any]:
    """A job's status with its API."""
    return {"job_status": job_status(task), "endpoint": endpoint(row.id), "api_spec": api_spec(row)}


class TaskApiSchema(Schema):
    """`GET /api/v1/task-apis/{apiName}` without a jobID: the API and its jobs."""

    api_spec = fields.Nested(ApiSpecSchema, required=True)
    endpoint = fields.String(required=True)
    task_job_statuses = fields.List(fields.Nested(JobStatusSchema), required=True)
    recent_job_statuses = fields.List(fields.Nested(JobStatusSchema), required=True)


def task_api(row: DefinitionRow, running: list[Task], recent: list[Task]) -> dict[str, Any]:
    """A Task API with its jobs in progress and its recently finished ones."""
    return {
        "api_spec": api_spec(row),
        "endpoint": endpoint(row.id),
        "task_job_statuses": [job_status(t) for t in running],
        "recent_job_statuses": [job_status(t) for t in recent],
    }


class TaskApiSummarySchema(Schema):
    """A Task API in the list: its spec, its endpoint and its jobs in progress."""

    api_spec = fields.Nested(ApiSpecSchema, required=True)
    endpoint = fields.String(required=True)
    task_job_statuses = fields.List(fields.Nested(JobStatusSchema), required=True)


class TaskApiListSchema(Schema):
    """`GET /api/v1/task-apis`: every Task API, by name (what `cortex get` lists)."""

    items = fields.List(fields.Nested(TaskApiSummarySchema), required=True)


def task_api_list(apis: list[tuple[DefinitionRow, list[Task]]]) -> dict[str, Any]:
    """Every Task API with its jobs in progress, in name order."""
    return {
        "items": [
            {
                "api_spec": api_spec(row),
                "endpoint": endpoint(row.id),
                "task_job_statuses": [job_status(t) for t in running],
            }
            for row, running in apis
        ]
    }
