"""`taskexec retry`: replay failed, timed-out or cancelled tasks, one by id or many by filter."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

from cli.client import PRIORITIES, _read_input, http_command, since_time
from cli.output import Printer
from cli.session import EXIT_CODES, Client

RETRYABLE = ("FAILED", "TIMED_OUT", "CANCELLED")


@click.command(epilog=EXIT_CODES + " A retry by filter exits 1 if any task was refused.")
@http_command
@click.argument("task_id", required=False)
@click.option("--input", "input_", default=None, help="With TASK_ID: new input (JSON, @file, @-).")
@click.option("--priority", type=click.Choice(PRIORITIES), default=None, help="With TASK_ID.")
@click.option("--status", multiple=True, help="FAILED, TIMED_OUT, CANCELLED (default: all three).")
@click.option("--definition", default=None, help="Task definition id.")
@click.option("--workflow", default=None, help="Workflow instance id.")
@click.option("--since", default=None, help="Created since: an age (30m, 12h, 7d) or RFC 3339.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def retry(
    client: Client,
    printer: Printer,
    task_id: str | None,
    input_: str | None,
    priority: str | None,
    status: tuple[str, ...],
    definition: str | None,
    workflow: str | None,
    since: str | None,
    limit: int,
) -> None:
    """Replay TASK_ID as a new task, or every task a filter matches that is not yet retried.

    `taskexec retry ID [--input JSON]`, or `taskexec retry --status FAILED --definition X
    [--since 1d] [--limit N]`: newest first, at most --limit (run again for the next ones).
    """
    statuses = [s.strip().upper() for raw in status for s in raw.split(",") if s.strip()]
    filtering = bool(statuses or definition or workflow or since)
    if task_id is not None:
        if filtering:
            raise click.UsageError("give TASK_ID or filter options, not both")
        body: dict[str, Any] = {}
        if input_ is not None:
            body["input"] = _read_input(input_)
        if priority:
            body["priority"] = priority
        path = f"/api/v1/tasks/{quote(task_id, safe='')}/retry"
        doc = client.call("POST", path, json=body)
        _emit(printer, doc, f"{doc['id']} {doc['status']} (retry of {doc['retryOf']})")
        return
    if not filtering:
        raise click.UsageError(
            "give TASK_ID, or at least one of --status, --definition, --workflow, --since"
        )
    if input_ is not None or priority:
        raise click.UsageError("--input and --priority go with TASK_ID")
    unknown = [s for s in statuses if s not in RETRYABLE]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}: not one of {', '.join(RETRYABLE)}", param_hint="--status"
        )
    flt: dict[str, Any] = {}
    if statuses:
        flt["status"] = ",".join(statuses)
    if definition:
        flt["taskDefinitionId"] = definition
    if workflow:
        flt["workflowInstanceId"] = workflow
    if since:
        flt["createdAfter"] = since_time(since)
    doc = client.call("POST", "/api/v1/tasks/retry", json={"filter": flt, "limit": limit})
    items = doc["items"]
    refused = [item for item in items if "error" in item]
    lines = [
        f"{item['retryOf']} not retried: {item['error']['code']} {item['error']['message']}"
        if "error" in item
        else f"{item['id']} {item['status']} (retry of {item['retryOf']})"
        for item in items
    ]
    lines.append(f"retried {len(items) - len(refused)} of {len(items)} task(s)")
    _emit(printer, doc, "\n".join(lines))
    if refused:
        click.get_current_context().exit(1)


def _emit(printer: Printer, doc: Any, text: str) -> None:
    click.echo(json.dumps(doc, indent=2) if printer.json else text)
