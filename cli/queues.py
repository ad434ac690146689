"""`taskexec queues`: every executor's queue over GET /api/v1/queues (needs tasks:admin)."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.client import http_command
from cli.output import Printer, table
from cli.session import EXIT_CODES, Client

URL = "/api/v1/queues"


def _age(ms: int | None) -> str | None:
    """Milliseconds as a short human duration (None stays None, shown as '-')."""
    if ms is None:
        return None
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


@click.command(epilog=EXIT_CODES)
@http_command
def queues(client: Client, printer: Printer) -> None:
    """Show each executor's queue: waiting, dispatched, running, workers, slots, oldest wait.

    WAITING tasks have no message in Redis yet (delayed, in a retry's backoff, held back),
    DISPATCHED ones do; OLDEST is how long the oldest due task not yet running has waited.
    WORKERS and SLOTS read '-' when the API could not read the workers' heartbeats.
    """
    doc: dict[str, Any] = client.call("GET", URL)
    if printer.json:
        click.echo(json.dumps(doc, indent=2))
        return
    rows = [
        (
            q["executor"],
            q["waiting"],
            q["dispatched"],
            q["running"],
            q["workers"],
            q["slots"],
            _age(q["oldestWaitingAge"]),
        )
        for q in doc["items"]
    ]
    headers = ("EXECUTOR", "WAITING", "DISPATCHED", "RUNNING", "WORKERS", "SLOTS", "OLDEST")
    click.echo(table(headers, rows))
