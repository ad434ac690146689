"""The console's schedules page: the caller's schedules (everyone's for tasks:admin)."""

from __future__ import annotations

from flask import request

from api import operations
from api.auth import current_principal, requires
from api.console.blueprint import bp, page_number, query_string, render
from api.pagination import page_doc
from api.responses.schedules import schedule_json
from api.services import services
from shared import store

PAGE_SIZE = 50


@bp.route("/schedules")
@requires("schedules:read")
def schedules() -> tuple[str, int]:
    """Schedules newest first, with their next and last runs and a link to what they fired."""
    paused = {"true": True, "false": False}.get(request.args.get("paused", ""))
    page = page_number()
    flt = store.ScheduleFilter(owner=operations.owner_scope(current_principal()), paused=paused)
    with services().db.connection() as conn:
        rows, total = store.list_schedules(
            conn, flt, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
    pagination = page_doc(page, PAGE_SIZE, total)
    base = {"paused": request.args.get("paused", "")}
    return render(
        "schedules.html",
        items=[schedule_json(r) for r in rows],
        pagination=pagination,
        paused=base["paused"],
        prev=query_string({**base, "page": page - 1}) if page > 1 else None,
        next=query_string({**base, "page": page + 1}) if page < pagination["totalPages"] else None,
    )
