"""`taskexec webhooks …`: subscriptions, their secrets, tests and the delivery log, over HTTP."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click
import requests

from cli.client import http_command, since_time
from cli.output import Printer, fields, table
from cli.session import EXIT_CODES, ApiFailure, Client, ConnectionFailure

URL = "/api/v1/webhooks"
EVENTS = (
    "task.started",
    "task.retrying",
    "task.completed",
    "task.failed",
    "task.timed_out",
    "task.cancelled",
)
DELIVERY_STATUSES = ("PENDING", "DELIVERED", "FAILED")


@click.group()
def webhooks() -> None:
    """Webhook subscriptions: signed task events sent to your URL, and their delivery log."""


def _path(webhook_id: str) -> str:
    return f"{URL}/{quote(webhook_id, safe='')}"


def _filter_text(doc: dict[str, Any]) -> str | None:
    flt = doc.get("filter") or {}
    parts = [f"{k}={v}" for k, v in flt.items() if v is not None]
    return ", ".join(parts) or None


def _show(printer: Printer, doc: dict[str, Any]) -> None:
    if printer.json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        fields(
            [
                ("id", doc["id"]),
                ("url", doc["url"]),
                ("events", ", ".join(doc["events"])),
                ("filter", _filter_text(doc)),
                ("description", doc.get("description")),
                ("scope", doc.get("scope")),
                ("disabled", str(doc["disabled"]).lower()),
                ("disabledReason", doc.get("disabledReason")),
                ("disabledAt", doc.get("disabledAt")),
                ("failingSince", doc.get("failingSince")),
                ("previousSecretExpiresAt", doc.get("previousSecretExpiresAt")),
                ("createdAt", doc.get("createdAt")),
                ("secret", doc.get("secret")),
            ]
        )
    )
    if doc.get("secret"):
        click.echo("\nKeep the secret: it is not shown again.", err=True)


def _show_delivery(printer: Printer, doc: dict[str, Any]) -> None:
    if printer.json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        fields(
            [
                ("id", doc["id"]),
                ("eventId", doc["eventId"]),
                ("type", doc["type"]),
                ("taskId", doc.get("taskId")),
                ("status", doc["status"]),
                ("attempts", doc["attempts"]),
                ("nextAttemptAt", doc.get("nextAttemptAt")),
                ("lastAttemptAt", doc.get("lastAttemptAt")),
                ("responseStatus", doc.get("responseStatus")),
                ("error", doc.get("error")),
            ]
        )
    )


def _filter_body(definition: str | None, workflow: str | None) -> dict[str, Any]:
    return {"taskDefinitionId": definition or None, "workflowInstanceId": workflow or None}


_EVENT = click.Choice(EVENTS)


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("target", metavar="URL")
@click.option(
    "--event",
    "events",
    type=_EVENT,
    multiple=True,
    help="Repeat for several; default the terminal ones (completed, failed, timed_out, cancelled).",
)
@click.option("--definition", default=None, help="Only tasks of this definition.")
@click.option("--workflow", default=None, help="Only tasks of this workflow instance.")
@click.option("--description", default=None)
def create(
    client: Client,
    printer: Printer,
    target: str,
    events: tuple[str, ...],
    definition: str | None,
    workflow: str | None,
    description: str | None,
) -> None:
    """Subscribe URL to task events; prints the signing secret, shown only this once."""
    body: dict[str, Any] = {"url": target, "filter": _filter_body(definition, workflow)}
    if events:
        body["events"] = list(events)
    if description is not None:
        body["description"] = description
    _show(printer, client.call("POST", URL, json=body))


@webhooks.command("list", epilog=EXIT_CODES)
@http_command
@click.option("--disabled/--enabled", default=None, help="Only disabled, or only enabled ones.")
@click.option("--event", type=_EVENT, default=None, help="Only those subscribed to it.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
def list_webhooks(
    client: Client,
    printer: Printer,
    disabled: bool | None,
    event: str | None,
    limit: int,
    page: int,
) -> None:
    """List subscriptions, newest first."""
    params: dict[str, Any] = {"limit": limit, "page": page}
    if disabled is not None:
        params["disabled"] = str(disabled).lower()
    if event:
        params["event"] = event
    doc = client.call("GET", URL, params=params)
    if printer.json:
        click.echo(json.dumps(doc, indent=2))
        return
    rows = [
        (
            w["id"],
            w["url"],
            ",".join(e.removeprefix("task.") for e in w["events"]),
            _filter_text(w),
            "disabled" if w["disabled"] else "enabled",
            w.get("description"),
        )
        for w in doc["items"]
    ]
    click.echo(table(("ID", "URL", "EVENTS", "FILTER", "STATE", "DESCRIPTION"), rows))


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
def get(client: Client, printer: Printer, webhook_id: str) -> None:
    """Show one subscription (not its secret)."""
    _show(printer, client.call("GET", _path(webhook_id)))


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
@click.option("--new-url", default=None, help="Send to this URL instead.")
@click.option("--event", "events", type=_EVENT, multiple=True, help="Replaces the events.")
@click.option("--definition", default=None, help="Filter: definition ('' for any).")
@click.option("--workflow", default=None, help="Filter: workflow instance ('' for any).")
@click.option("--description", default=None)
def update(
    client: Client,
    printer: Printer,
    webhook_id: str,
    new_url: str | None,
    events: tuple[str, ...],
    definition: str | None,
    workflow: str | None,
    description: str | None,
) -> None:
    """Change a subscription's URL, events, filter or description."""
    body: dict[str, Any] = {}
    if new_url is not None:
        body["url"] = new_url
    if events:
        body["events"] = list(events)
    if definition is not None or workflow is not None:
        current = client.call("GET", _path(webhook_id))["filter"]
        body["filter"] = _filter_body(
            current.get("taskDefinitionId") if definition is None else definition,
            current.get("workflowInstanceId") if workflow is None else workflow,
        )
    if description is not None:
        body["description"] = description
    _show(printer, client.call("PATCH", _path(webhook_id), json=body))


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
def enable(client: Client, printer: Printer, webhook_id: str) -> None:
    """Re-enable a subscription (clears the reason it was disabled)."""
    _show(printer, client.call("PATCH", _path(webhook_id), json={"disabled": False}))


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
def disable(client: Client, printer: Printer, webhook_id: str) -> None:
    """Disable a subscription: no events are queued for it until re-enabled."""
    _show(printer, client.call("PATCH", _path(webhook_id), json={"disabled": True}))


@webhooks.command("rotate-secret", epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
def rotate_secret(client: Client, printer: Printer, webhook_id: str) -> None:
    """Replace the signing secret; the old one keeps signing beside it for 24 hours."""
    _show(printer, client.call("POST", f"{_path(webhook_id)}/rotate-secret"))


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
def delete(client: Client, printer: Printer, webhook_id: str) -> None:
    """Delete a subscription and its delivery log."""
    path = _path(webhook_id)
    try:
        response = client.session.request("DELETE", client.url + path, timeout=client.timeout)
    except requests.RequestException as exc:
        raise ConnectionFailure(f"cannot reach {client.url}: {exc}") from exc
    if response.status_code == 204:
        click.echo(json.dumps({"deleted": webhook_id}) if printer.json else f"deleted {webhook_id}")
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


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
def test(client: Client, printer: Printer, webhook_id: str) -> None:
    """Send a webhook.test event to this subscription; prints its delivery."""
    _show_delivery(printer, client.call("POST", f"{_path(webhook_id)}/test"))


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
@click.option("--status", type=click.Choice(DELIVERY_STATUSES), default=None)
@click.option("--task", "task_id", default=None, help="Only the deliveries of this task's events.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
def deliveries(
    client: Client,
    printer: Printer,
    webhook_id: str,
    status: str | None,
    task_id: str | None,
    limit: int,
    page: int,
) -> None:
    """A subscription's delivery log, newest first."""
    params: dict[str, Any] = {"limit": limit, "page": page}
    if status:
        params["status"] = status
    if task_id:
        params["taskId"] = task_id
    doc = client.call("GET", f"{_path(webhook_id)}/deliveries", params=params)
    if printer.json:
        click.echo(json.dumps(doc, indent=2))
        return
    rows = [
        (
            d["id"],
            d["type"],
            d.get("taskId"),
            d["status"],
            d["attempts"],
            d.get("responseStatus"),
            d.get("lastAttemptAt"),
            d.get("error"),
        )
        for d in doc["items"]
    ]
    headers = ("ID", "TYPE", "TASK", "STATUS", "ATTEMPTS", "HTTP", "LAST ATTEMPT", "ERROR")
    click.echo(table(headers, rows))


@webhooks.command(epilog=EXIT_CODES)
@http_command
@click.argument("webhook_id")
@click.argument("delivery_id", required=False)
@click.option(
    "--status",
    type=click.Choice(DELIVERY_STATUSES, case_sensitive=False),
    default=None,
    help="Without DELIVERY_ID: which to send again (default FAILED).",
)
@click.option("--since", default=None, help="Events since: an age (30m, 12h, 7d) or RFC 3339.")
@click.option("--until", default=None, help="Events before: an age or RFC 3339.")
@click.option("--task", "task_id", default=None, help="The deliveries of one task's events.")
@click.option(
    "--batch", type=click.IntRange(1, 10_000), default=1000, show_default=True, help="Per request."
)
def redeliver(
    client: Client,
    printer: Printer,
    webhook_id: str,
    delivery_id: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    task_id: str | None,
    batch: int,
) -> None:
    """Send a delivery again (same webhook-id), whatever its status; or every one a filter
    matches, oldest first (`redeliver ID --since 2d`: the FAILED ones of the last two days).
    """
    filtering = status is not None or since or until or task_id
    if delivery_id is not None:
        if filtering:
            raise click.UsageError("give DELIVERY_ID or filter options, not both")
        path = f"{_path(webhook_id)}/deliveries/{quote(delivery_id, safe='')}/redeliver"
        _show_delivery(printer, client.call("POST", path))
        return
    flt: dict[str, Any] = {"status": (status or "FAILED").upper()}
    if since:
        flt["createdAfter"] = since_time(since)
    if until:
        flt["createdBefore"] = since_time(until)
    if task_id:
        flt["taskId"] = task_id
    body: dict[str, Any] = {"filter": flt, "limit": batch}
    total = 0
    while True:  # one request per batch, each going on after the last one's cursor
        doc = client.call("POST", f"{_path(webhook_id)}/deliveries/redeliver", json=body)
        total += doc["redelivered"]
        if not doc["nextCursor"]:
            break
        body["cursor"] = doc["nextCursor"]
    if printer.json:
        click.echo(json.dumps({"redelivered": total}, indent=2))
    else:
        click.echo(f"redelivered {total} {flt['status']} delivery(ies) of webhook {webhook_id}")
