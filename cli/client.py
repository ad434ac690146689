"""The HTTP client commands of `taskexec`: submit, get, logs, cancel, complete, delete, list, …"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import click

from cli.output import Printer, job_label, task_label
from cli.polling import print_logs, watch
from cli.session import EXIT_CODES, EXIT_UNSUCCESSFUL, Client

PRIORITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_time(raw: str, now: datetime | None = None) -> str:
    """`--since`, `--until`: an age (90s, 30m, 12h, 7d: that long ago) or an RFC 3339 time."""
    match = _AGE.match(raw.strip())
    if not match:
        return raw
    delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    return ((now or datetime.now(UTC)) - delta).isoformat().replace("+00:00", "Z")


def http_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --url/--api-key/--token/-o to a command and pass it a Client and a Printer."""

    @functools.wraps(fn)
    def wrapper(
        url: str, api_key: str | None, token: str | None, output: str, **kwargs: Any
    ) -> Any:
        return fn(Client(url, api_key, token, timeout=30), Printer(output), **kwargs)

    for option in reversed(
        (
            click.option(
                "--url",
                envvar="TASKEXEC_URL",
                default="http://127.0.0.1:8000",
                show_default=True,
                help="Base URL of the service [env TASKEXEC_URL].",
            ),
            click.option("--api-key", envvar="TASKEXEC_API_KEY", help="[env TASKEXEC_API_KEY]"),
            click.option("--token", envvar="TASKEXEC_TOKEN", help="A JWT [env TASKEXEC_TOKEN]."),
            click.option(
                "-o",
                "--output",
                type=click.Choice(["table", "json"]),
                default="table",
                show_default=True,
                help="Human-readable table, or JSON for scripts.",
            ),
        )
    ):
        wrapper = option(wrapper)
    return wrapper


def _task_state(task: dict[str, Any]) -> tuple[str, bool]:
    return task_label(task), task.get("status") in {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}


def _job_state(doc: dict[str, Any]) -> tuple[str, bool]:
    status = doc["job_status"].get("status")
    return job_label(doc["job_status"]), status != "status_running"


def _finish(ok: bool) -> None:
    if not ok:
        click.get_current_context().exit(EXIT_UNSUCCESSFUL)


def _read_input(raw: str, hint: str = "--input") -> dict[str, Any]:
    """A JSON object given inline, as @file, or as @- (stdin)."""
    text = raw
    if raw.startswith("@"):
        try:
            text = click.open_file(raw[1:], encoding="utf-8").read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {raw[1:]}: {exc}", param_hint=hint) from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from exc
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=hint)
    return value


def _is_task_id(text: str) -> bool:
    """Task ids are UUIDs; anything else on its own names a Task API (as `cortex get NAME`)."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


_interval = click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=0.5,
    show_default=True,
    help="Seconds between polls while waiting.",
)


@click.command(epilog=EXIT_CODES)
@http_command
@click.argument("definition")
@click.option("--input", "input_", default="{}", help="JSON object, @file, or @- for stdin.")
@click.option("--priority", type=click.Choice(PRIORITIES), default=None)
@click.option("--timeout", type=click.IntRange(min=1), help="Attempt timeout in milliseconds.")
@click.option("--workflow", default=None, help="Workflow instance id.")
@click.option("--wait", is_flag=True, help="Show live status until the task finishes.")
@_interval
def submit(
    client: Client,
    printer: Printer,
    definition: str,
    input_: str,
    priority: str | None,
    timeout: int | None,
    workflow: str | None,
    wait: bool,
    interval: float,
) -> None:
    """Submit a task of DEFINITION; with --wait, exit 0 only if it COMPLETED."""
    body: dict[str, Any] = {"taskDefinitionId": definition, "input": _read_input(input_)}
    if priority:
        body["priority"] = priority
    if workflow:
        body["workflowInstanceId"] = workflow
    if timeout:
        body["executionConfig"] = {"timeout": timeout}
    created = client.call("POST", "/api/v1/tasks", json=body)
    if not wait:
        printer.submitted(created)
        return
    if not printer.json:
        click.echo(f"submitted {created['id']}")
    task = watch(
        lambda: client.call("GET", f"/api/v1/tasks/{created['id']}"), _task_state, printer, interval
    )
    printer.task(task)
    _finish(task.get("status") == "COMPLETED")


@click.command(epilog=EXIT_CODES)
@http_command
@click.argument("ids", nargs=-1, metavar="[TASK_ID | API_NAME [JOB_ID]]")
@click.option("--watch", "follow", is_flag=True, help="Show live status until it finishes.")
@_interval
def get(
    client: Client, printer: Printer, ids: tuple[str, ...], follow: bool, interval: float
) -> None:
    """Show a task, or every Task API, one, or a job of one.

    With no argument, every Task API (`cortex get`); with an API name, that API and its jobs
    (`cortex get NAME`); with a task id (a UUID), the task; with both, the job.
    """
    if len(ids) > 2:
        raise click.UsageError("give TASK_ID, API_NAME, or API_NAME JOB_ID")
    if len(ids) == 2:
        path = f"/api/v1/task-apis/{quote(ids[0], safe='')}/{quote(ids[1], safe='')}"
        doc = client.call("GET", path)
        if follow:
            doc = watch(lambda: client.call("GET", path), _job_state, printer, interval)
        printer.job(doc)
        if follow:
            _finish(doc["job_status"].get("status") == "status_succeeded")
        return
    if len(ids) == 1 and (follow or _is_task_id(ids[0])):  # only tasks and jobs are watched
        path = f"/api/v1/tasks/{quote(ids[0], safe='')}"
        task = client.call("GET", path)
        if follow:
            task = watch(lambda: client.call("GET", path), _task_state, printer, interval)
        printer.task(task)
        if follow:
            _finish(task.get("status") == "COMPLETED")
        return
    if follow:
        raise click.UsageError("--watch needs TASK_ID, or API_NAME JOB_ID")
    if ids:
        printer.task_api(client.call("GET", f"/api/v1/task-apis/{quote(ids[0], safe='')}"))
    else:
        printer.task_apis(client.call("GET", "/api/v1/task-apis"))


@click.command(epilog=EXIT_CODES)
@http_command
@click.argument("task_id")
@click.option("-f", "--follow", is_flag=True, help="Go on until the task has finished.")
@_interval
def logs(client: Client, printer: Printer, task_id: str, follow: bool, interval: float) -> None:
    """Print a task's log lines, oldest first.

    With -o json, one JSON object a line. --follow polls until the task has finished and every
    line is printed; Ctrl-C stops it (exit 130) and leaves the task alone.
    """
    print_logs(client, printer, task_id, follow, interval)


@click.command(epilog=EXIT_CODES)
@http_command
@click.argument("task_id")
@click.argument("output_", metavar="OUTPUT")
def complete(client: Client, printer: Printer, task_id: str, output_: str) -> None:
    """Complete a PENDING manual task with OUTPUT.

    OUTPUT is a JSON object, @file, or @- for stdin; it must match the definition's outputSchema.
    """
    body = {"output": _read_input(output_, hint="OUTPUT")}
    printer.task(
        client.call("POST", f"/api/v1/tasks/{quote(task_id, safe='')}/complete", json=body)
    )


@click.command(epilog=EXIT_CODES)
@http_command
@click.argument("task_id")
@click.option("--force", is_flag=True, help="Kill a running attempt at once.")
@click.option("--reason", default=None, help="Why, recorded with the task.")
def cancel(client: Client, printer: Printer, task_id: str, force: bool, reason: str | None) -> None:
    """Cancel a pending, retrying or running task."""
    body: dict[str, Any] = {"force": force}
    if reason:
        body["reason"] = reason
    printer.cancelled(
        client.call("POST", f"/api/v1/tasks/{quote(task_id, safe='')}/cancel", json=body)
    )


@click.command(epilog=EXIT_CODES)
@http_command
@click.argument("api_name")
@click.argument("job_id")
def delete(client: Client, printer: Printer, api_name: str, job_id: str) -> None:
    """Stop a job of a Task API (Cortex's `cortex delete API_NAME JOB_ID`)."""
    path = f"/api/v1/task-apis/{quote(api_name, safe='')}/{quote(job_id, safe='')}"
    printer.message(client.call("DELETE", path))


@click.command("list", epilog=EXIT_CODES)
@http_command
@click.option("--status", multiple=True, help="Repeat, or comma-separate: RUNNING,PENDING.")
@click.option("--workflow", default=None, help="Workflow instance id.")
@click.option("--definition", default=None, help="Task definition id.")
@click.option(
    "--pending-reason",
    multiple=True,
    help="Waiting tasks by why they wait: QUEUED, NO_WORKER, CONCURRENCY_LIMIT, ...",
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
def list_tasks(
    client: Client,
    printer: Printer,
    status: tuple[str, ...],
    workflow: str | None,
    definition: str | None,
    pending_reason: tuple[str, ...],
    limit: int,
    page: int,
) -> None:
    """List tasks, newest first (WAITING: why a pending one waits)."""
    params: dict[str, Any] = {"limit": limit, "page": page}
    statuses = [s.strip().upper() for raw in status for s in raw.split(",") if s.strip()]
    if statuses:
        params["status"] = ",".join(statuses)
    reasons = [r.strip().upper() for raw in pending_reason for r in raw.split(",") if r.strip()]
    if reasons:
        params["pendingReason"] = ",".join(reasons)
    if workflow:
        params["workflowInstanceId"] = workflow
    if definition:
        params["taskDefinitionId"] = definition
    printer.tasks(client.call("GET", "/api/v1/tasks", params=params))


@click.command(epilog=EXIT_CODES)
@http_command
@click.argument("definition_id", required=False)
@click.option("--search", default=None, help="Text in the name or description.")
@click.option("--limit", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
def definitions(
    client: Client,
    printer: Printer,
    definition_id: str | None,
    search: str | None,
    limit: int,
    page: int,
) -> None:
    """List task definitions, or show one in full."""
    if definition_id:
        path = f"/api/v1/tasks/definitions/{quote(definition_id, safe='')}"
        printer.definition(client.call("GET", path))
        return
    params: dict[str, Any] = {"limit": limit, "page": page}
    if search:
        params["search"] = search
    printer.definitions(client.call("GET", "/api/v1/tasks/definitions", params=params))
