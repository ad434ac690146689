"""The Cortex-compatible Task API surface under /api/v1/task-apis/{apiName} (seed 003)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, jsonify, request

from api import openapi, operations, submission
from api.auth import current_principal, requires
from api.parsing import Blueprint
from api.responses import cortex
from api.schemas import SubmitJobSchema
from api.services import services
from shared import store, task_rows
from shared.errors import DefinitionNotFound, ServiceUnavailable, TaskNotFound, ValidationError
from shared.status import ACTIVE, TERMINAL

blp = Blueprint(
    "task_apis",
    __name__,
    url_prefix="/api/v1/task-apis",
    description="Cortex-compatible Task APIs: every task definition is one, named by its id",
)

IN_PROGRESS_SHOWN = 100
#: Definitions are published from code, so there are few; the list has no paging.
APIS_LISTED = 1000
RECENT_SHOWN = 20
_ACTIVE = tuple(sorted(s.value for s in ACTIVE))
_TERMINAL = tuple(sorted(s.value for s in TERMINAL))
_JOB_ID = {"in": "query", "name": "jobID", "schema": {"type": "string"}}
_JOB_ID_REQUIRED = {**_JOB_ID, "required": True}


def _definition(api_name: str) -> store.DefinitionRow:
    try:
        return services().definitions.get(api_name)
    except DefinitionNotFound as exc:
        raise DefinitionNotFound(f"task API {api_name!r} not found", {"apiName": api_name}) from exc


def _job(api_name: str, job_id: str) -> store.Task:
    """Load a visible job of `api_name`; a task of another definition is not found here."""
    try:
        with services().db.connection() as conn:
            task = operations.load_task(conn, job_id, current_principal())
        if task.task_definition_id == api_name:
            return task
    except TaskNotFound:
        pass
    raise TaskNotFound(f"job {job_id} of task API {api_name!r} not found", {"jobID": job_id})


def _has_job_id() -> bool:
    return "jobID" in request.args


def _lists_jobs() -> bool:
    return "jobID" not in request.args


def _job_id_query() -> str:
    job_id = request.args.get("jobID")
    if not job_id:
        raise ValidationError("jobID is required", {"field": "jobID", "issue": "missing"})
    return job_id


# ------------------------------------------------------------------ submit


@blp.route("/<api_name>", methods=["POST"])
@requires("tasks:execute")
@blp.arguments(SubmitJobSchema(), required=False, example=openapi.SUBMIT_JOB_EXAMPLE)
@blp.doc(
    operationId="submitJob",
    responses=openapi.responses(
        {200: openapi.ok(cortex.JobSubmittedSchema, "Submitted", (), openapi.JOB_LINKS)},
        404,
        413,
        422,
    ),
)
def submit_job(body: dict[str, Any] | None, api_name: str) -> tuple[Response, int]:
    """Submit a job: `config` merged over the definition's default config becomes the input.

    Request: {"timeout": 60, "config": {"seconds": 5}}
    Response 200: {"job_id": "...", "api_name": "sleep", "kind": "TaskAPI", "workers": 1,
                   "config": {"seconds": 5}, "api_id": "sleep-1.0.0", "timeout": 60,
                   "created_time": "2020-07-16T14:56:10.276007Z"}
    Errors: 400 malformed body, 404 unknown API, 422 config fails the input schema.
    """
    if request.get_data(cache=True).strip() and not request.is_json:
        raise ValidationError("the body must be JSON (Content-Type: application/json)")
    body = body or {}
    svc = services()
    principal = current_principal()
    definition = _definition(api_name)
    config = {**(definition.default_config or {}), **(body.get("config") or {})}
    timeout = body.get("timeout")
    task_body: dict[str, Any] = {"input": config}
    deadline_at = None
    if timeout is not None:
        deadline_at = datetime.now(UTC) + timedelta(seconds=timeout)
        # The attempt's own time limit also stops the job if the sweeper is not running.
        task_body["executionConfig"] = {"timeout": min(definition.timeout_ms, timeout * 1000)}
    row = task_rows.new_task(
        principal, task_body, definition, deadline_at=deadline_at, source="task_apis"
    )
    task = submission.submit(svc, principal, [row])[0].task
    if timeout is not None:
        try:
            with svc.db.connection() as conn:
                store.anchor_deadline(conn, task.id, timeout)
        except ServiceUnavailable:
            pass  # the job is accepted; its deadline stays the API host's estimate
    return jsonify(cortex.job_submitted(task, timeout)), 200


# ------------------------------------------------------------------ read


@blp.route("", methods=["GET"], strict_slashes=False)
# The permissions of `GET /api/v1/task-apis/{apiName}`: it shows definitions and lists jobs.
@requires("tasks:definitions:read")
@requires("tasks:list")
@blp.doc(
    operationId="listTaskApis",
    responses=openapi.responses(
        {200: openapi.ok(cortex.TaskApiListSchema, "Every Task API with its jobs in progress")}
    ),
)
def list_apis() -> Response:
    """List every Task API (`cortex get` with no name), in name order.

    Response 200: {"items": [{"api_spec": {"name": "sleep", "kind": "TaskAPI", ...},
                              "endpoint": "http://host/api/v1/task-apis/sleep",
                              "task_job_statuses": [in progress, newest first]}]}
    Each API shows at most 100 jobs in progress, the caller's own unless tasks:admin.
    """
    owner = operations.owner_scope(current_principal())
    with services().db.connection() as conn:
        rows, _ = store.list_definitions(conn, type_=None, search=None, limit=APIS_LISTED, offset=0)
        apis = [(row, _running(conn, owner, row.id)) for row in rows]
    return jsonify(cortex.task_api_list(apis))


@blp.route("/<api_name>", methods=["GET"])
# One URL, two reads (as in Cortex): a job's status with ?jobID=, else the API and its jobs.
@requires("tasks:read", when=_has_job_id)
@requires("tasks:definitions:read", when=_lists_jobs)
@requires("tasks:list", when=_lists_jobs)
@blp.doc(
    parameters=[_JOB_ID],
    operationId="getTaskApi",
    responses=openapi.responses(
        {
            200: openapi.ok(
                openapi.one_of("JobResponse", "TaskApi"),
                "With jobID, the job (JobResponse); without, the API and its jobs (TaskApi)",
            )
        },
        404,
    ),
)
def get_api(api_name: str) -> Response:
    """With `?jobID=`, a job's status (tasks:read); without, the API and its jobs.

    Response 200 (job): {"job_status": {"job_id", "api_name", "kind", "workers", "config",
                         "api_id", "status", "created_time", "start_time", "end_time"?},
                         "endpoint": "http://host/api/v1/task-apis/sleep", "api_spec": {...}}
    Response 200 (API, needs tasks:definitions:read and tasks:list):
        {"api_spec": {...}, "endpoint": "...", "task_job_statuses": [in progress, newest first],
         "recent_job_statuses": [finished, newest first]}
    Errors: 404 unknown API, or a job that is not this API's (or not yours).
    """
    if _has_job_id():
        return _job_response(api_name, _job_id_query())
    return _api_response(api_name)


@blp.route("/<api_name>/<job_id>", methods=["GET"])
@requires("tasks:read")
@blp.doc(
    operationId="getJob",
    responses=openapi.responses({200: openapi.ok(cortex.JobResponseSchema, "The job")}, 404),
)
def get_job(api_name: str, job_id: str) -> Response:
    """A job's status, as `GET /api/v1/task-apis/{apiName}?jobID=<job_id>`.

    Errors: 404 unknown API, or a job that is not this API's (or not yours).
    """
    return _job_response(api_name, job_id)


def _job_response(api_name: str, job_id: str) -> Response:
    definition = _definition(api_name)
    task = _job(api_name, job_id)
    return jsonify(cortex.job_response(definition, task))


def _api_response(api_name: str) -> Response:
    definition = _definition(api_name)
    owner = operations.owner_scope(current_principal())
    with services().db.connection() as conn:
        running = _running(conn, owner, api_name)
        recent = store.list_tasks(
            conn,
            store.TaskFilter(owner=owner, statuses=_TERMINAL, task_definition_id=api_name),
            limit=RECENT_SHOWN,
        )
    return jsonify(cortex.task_api(definition, running, recent))


def _running(conn: store.Conn, owner: str | None, api_name: str) -> list[store.Task]:
    """The jobs of `api_name` in progress, newest first, at most IN_PROGRESS_SHOWN."""
    return store.list_tasks(
        conn,
        store.TaskFilter(owner=owner, statuses=_ACTIVE, task_definition_id=api_name),
        limit=IN_PROGRESS_SHOWN,
    )


# ------------------------------------------------------------------ stop


@blp.route("/<api_name>", methods=["DELETE"])
@requires("tasks:cancel")
@blp.doc(
    parameters=[_JOB_ID_REQUIRED],
    operationId="stopJobByQuery",
    responses=openapi.responses(
        {200: openapi.ok(cortex.StoppedSchema, "The job is stopping")}, 404, 409
    ),
)
def stop_job_by_query(api_name: str) -> Response:
    """Stop a job: `DELETE /api/v1/task-apis/{apiName}?jobID=<id>`.

    Response 200: {"message": "stopped job <job_id>"}
    Errors: 400 no jobID, 404 unknown API or job, 409 the job has already finished.
    """
    return _stop(api_name, _job_id_query())


@blp.route("/<api_name>/<job_id>", methods=["DELETE"])
@requires("tasks:cancel")
@blp.doc(
    operationId="stopJob",
    responses=openapi.responses(
        {200: openapi.ok(cortex.StoppedSchema, "The job is stopping")}, 404, 409
    ),
)
def stop_job(api_name: str, job_id: str) -> Response:
    """Stop a job: `DELETE /api/v1/task-apis/{apiName}/{jobId}`.

    Response 200: {"message": "stopped job <job_id>"}
    Errors: 404 unknown API or job, 409 the job has already finished.
    """
    return _stop(api_name, job_id)


def _stop(api_name: str, job_id: str) -> Response:
    _definition(api_name)
    task = _job(api_name, job_id)
    # A graceful cancel, like Cortex deleting the job's pod: the handler sees it at its next
    # check and the worker escalates to a kill after TASKEXEC_CANCEL_GRACE.
    reason = "stopped through the Task API"
    operations.cancel(task.id, current_principal(), reason, False, surface="task_apis")
    return jsonify(cortex.stopped(task))
