"""The console's queues page: each executor's queue now, and tasks finished per minute."""

from __future__ import annotations

from typing import Any

from flask import current_app

from api import operations
from api.auth import current_principal, requires
from api.console import chart
from api.console.blueprint import bp, render
from api.services import services
from shared import queues, store

#: The executors' queues are everyone's work: only tasks:admin sees them, as in the API.
QUEUES_PERMISSION = "tasks:admin"
_REDIS = "taskexec_console_redis"


def _redis() -> Any:
    """One heartbeat-reading client per app (it keeps its own connection pool)."""
    client = current_app.extensions.get(_REDIS)
    if client is None:
        client = current_app.extensions[_REDIS] = queues.redis_client(services().settings.redis_url)
    return client


@bp.route("/queues", endpoint="queues")
@requires("tasks:list")
def queues_page() -> tuple[str, int]:
    """Waiting, dispatched, running, workers and slots per executor; the last hour's chart."""
    return render("queues.html", **_context())


@bp.route("/queues/live")
@requires("tasks:list")
def queues_live() -> tuple[str, int]:
    """The page's changing part, fetched every few seconds."""
    return render("_queues_live.html", **_context())


def _context() -> dict[str, Any]:
    principal = current_principal()
    svc = services()
    snapshot = queues.snapshot(svc.db, _redis()) if principal.can(QUEUES_PERMISSION) else None
    with svc.db.connection() as conn:
        minutes = store.finished_per_minute(conn, operations.owner_scope(principal))
    return {
        "snapshot": snapshot,
        "chart": chart.build(minutes),
        "everyone": principal.is_admin,
        "refresh": 5,
    }
