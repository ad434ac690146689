"""`taskexec schedules create|list|get|pause|resume|delete|trigger` over /api/v1/schedules."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click
import requests

from cli.client import PRIORITIES, _read_input, http_command
from cli.output import Printer, compact, fields, table
from cli.session import EXIT_CODES, ApiFailure, Client, ConnectionFailure

URL = "/api/v1/schedules"
OVERLAP = ("ALLOW", "SKIP", "CANCEL_PREVIOUS")


@click.group()
def schedules() -> None:
    """Recurring schedules: one task per cron or interval slot."""


def _path(schedule_id: str) -> str:
    return f"{URL}/{quote(schedule_id, safe='')}"


def _rule(doc: dict[str, Any]) -> str:
    return f"cron {doc['cron']}" if "cron" in doc else f"every {doc.get('interval')} ms"


def _show(printer: Printer, doc: dict[str, Any]) -> None:
    if printer.json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        fields(
            [
                ("id", doc["id"]),
                ("name", doc["name"]),
                ("rule", f"{_rule(doc)} ({doc['timezone']})"),
                ("task", compact(doc["task"])),
                ("overlapPolicy", doc["overlapPolicy"]),
                ("catchupWindow", f"{doc['catchupWindow']} ms"),
                ("startAt", doc.get("startAt")),
                ("endAt", doc.get("endAt")),
                ("paused", str(doc["paused"]).lower()),
                ("nextRunAt", doc.get("nextRunAt")),
                ("lastRunAt", doc.get("lastRunAt")),
                ("skippedSlots", doc.get("skippedSlots")),
            ]
        )
    )


@schedules.command(epilog=EXIT_CODES)
@http_command
@click.argument("name")
@click.argument("definition_id")
@click.option("--cron", default=None, help="Five fields, read in --timezone.")
@click.option("--interval", type=click.IntRange(min=1000), default=None, help="Milliseconds.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option("--input", "input_", default="{}", help="JSON, @file or @- (stdin).")
@click.option("--priority", type=click.Choice(PRIORITIES), default=None)
@click.option("--overlap", type=click.Choice(OVERLAP), default="ALLOW", show_default=True)
@click.option("--catchup", type=click.IntRange(min=0), default=None, help="Catch-up window, ms.")
@click.option("--paused", is_flag=True, help="Create it paused.")
def create(
    client: Client,
    printer: Printer,
    name: str,
    definition_id: str,
    cron: str | None,
    interval: int | None,
    timezone: str,
    input_: str,
    priority: str | None,
    overlap: str,
    catchup: int | None,
    paused: bool,
) -> None:
    """Create schedule NAME firing DEFINITION_ID by --cron or --interval (exactly one)."""
    if (cron is None) == (interval is None):
        raise click.UsageError("give exactly one of --cron and --interval")
    task: dict[str, Any] = {"taskDefinitionId": definition_id, "input": _read_input(input_)}
    if priority:
        task["priority"] = priority
    body: dict[str, Any] = {"name": name, "timezone": timezone, "task": task}
    body.update({"overlapPolicy": overlap, "paused": paused})
    if cron is not None:
        body["cron"] = cron
    else:
        body["interval"] = interval
    if catchup is not None:
        body["catchupWindow"] = catchup
    _show(printer, client.call("POST", URL, json=body))


@schedules.command("list", epilog=EXIT_CODES)
@http_command
@click.option("--paused/--active", default=None, help="Only paused, or only active ones.")
@click.option("--definition", default=None, help="Task definition id.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
def list_schedules(
    client: Client,
    printer: Printer,
    paused: bool | None,
    definition: str | None,
    limit: int,
    page: int,
) -> None:
    """List schedules, newest first."""
    params: dict[str, Any] = {"limit": limit, "page": page}
    if paused is not None:
        params["paused"] = str(paused).lower()
    if definition:
        params["taskDefinitionId"] = definition
    doc = client.call("GET", URL, params=params)
    if printer.json:
        click.echo(json.dumps(doc, indent=2))
        return
    rows = [
        (
            s["id"],
            s["name"],
            _rule(s),
            s["task"]["taskDefinitionId"],
            "paused" if s["paused"] else "active",
            s.get("nextRunAt"),
        )
        for s in doc["items"]
    ]
    click.echo(table(("ID", "NAME", "RULE", "DEFINITION", "STATE", "NEXT RUN"), rows))


@schedules.command(epilog=EXIT_CODES)
@http_command
@click.argument("schedule_id")
def get(client: Client, printer: Printer, schedule_id: str) -> None:
    """Show one schedule."""
    _show(printer, client.call("GET", _path(schedule_id)))


@schedules.command(epilog=EXIT_CODES)
@http_command
@click.argument("schedule_id")
def pause(client: Client, printer: Printer, schedule_id: str) -> None:
    """Pause a schedule: it fires nothing until resumed."""
    _show(printer, client.call("PATCH", _path(schedule_id), json={"paused": True}))


@schedules.command(epilog=EXIT_CODES)
@http_command
@click.argument("schedule_id")
def resume(client: Client, printer: Printer, schedule_id: str) -> None:
    """Resume a schedule from its next slot after now (missed slots are not fired)."""
    _show(printer, client.call("PATCH", _path(schedule_id), json={"paused": False}))


@schedules.command(epilog=EXIT_CODES)
@http_command
@click.argument("schedule_id")
def trigger(client: Client, printer: Printer, schedule_id: str) -> None:
    """Fire the schedule's task now, outside its slots."""
    printer.submitted(client.call("POST", f"{_path(schedule_id)}/trigger"))


@schedules.command(epilog=EXIT_CODES)
@http_command
@click.argument("schedule_id")
def delete(client: Client, printer: Printer, schedule_id: str) -> None:
    """Delete a schedule; the tasks it fired stay."""
    path = _path(schedule_id)
    try:
        response = client.session.request("DELETE", client.url + path, timeout=client.timeout)
    except requests.RequestException as exc:
        raise ConnectionFailure(f"cannot reach {client.url}: {exc}") from exc
    if response.status_code == 204:
        click.echo(
            json.dumps({"deleted": schedule_id}) if printer.json else f"deleted {schedule_id}"
        )
        return
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    raise ApiFailure(
        response.status_code,
        str(error.get("code")),
        str(error.get("message")),
        error.get("details"),
        float(response.headers.get("Retry-After") or 1),
    )
