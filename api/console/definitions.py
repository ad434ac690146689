"""Console pages for task definitions: the list, one definition, and its submit form."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, redirect, request, url_for

from api.auth import current_principal, requires
from api.console import forms
from api.console.blueprint import bp, page_number, query_string, render
from api.errors import status_for
from api.pagination import page_doc
from api.responses.definitions import definition_json, definition_summary
from api.services import services
from shared import store
from shared.errors import DefinitionNotFound, TaskexecError
from shared.status import Priority, TaskType

PAGE_SIZE = 50


@bp.route("/definitions")
@requires("tasks:definitions:list")
def definitions() -> tuple[str, int]:
    """Definitions in id order, filtered by type and a text search, as the API lists them."""
    search = (request.args.get("search") or "").strip()[:200]
    type_ = request.args.get("type") or None
    if type_ not in (None, *(t.value for t in TaskType)):
        type_ = None
    page = page_number()
    with services().db.connection() as conn:
        rows, total = store.list_definitions(
            conn,
            type_=type_,
            search=search or None,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
    pagination = page_doc(page, PAGE_SIZE, total)
    base = {"search": search, "type": type_}
    return render(
        "definitions.html",
        items=[definition_summary(r) for r in rows],
        pagination=pagination,
        search=search,
        type=type_,
        types=[t.value for t in TaskType],
        prev=query_string({**base, "page": page - 1}) if page > 1 else None,
        next=query_string({**base, "page": page + 1}) if page < pagination["totalPages"] else None,
    )


def _definition(definition_id: str) -> dict[str, Any]:
    with services().db.connection() as conn:
        row = store.get_definition(conn, definition_id)
        if row is None:
            raise DefinitionNotFound(
                f"task definition {definition_id!r} not found", {"definitionId": definition_id}
            )
        versions = store.definition_versions(conn, definition_id)
    return definition_json(row, versions)


def _page(definition_id: str, status: int = 200, **extra: Any) -> tuple[str, int]:
    doc = _definition(definition_id)
    form = extra.pop("form", None) or {"input": _example(doc["inputSchema"]), "priority": "MEDIUM"}
    return render(
        "definition.html",
        status,
        definition=doc,
        pretty=lambda value: json.dumps(value, indent=2, ensure_ascii=False),
        priorities=[p.value for p in Priority],
        may_submit=current_principal().can("tasks:execute"),
        form=form,
        **extra,
    )


def _example(schema: dict[str, Any]) -> str:
    """A starting input for the form: the required properties with placeholder values."""
    placeholders = {"string": "", "number": 0, "integer": 0, "boolean": False, "array": []}
    example: dict[str, Any] = {}
    properties = schema.get("properties") or {}
    for name in schema.get("required") or []:
        kind = (properties.get(name) or {}).get("type")
        example[name] = placeholders.get(kind, {}) if isinstance(kind, str) else None
    return json.dumps(example, indent=2)


@bp.route("/definitions/<definition_id>")
@requires("tasks:definitions:read")
def definition(definition_id: str) -> tuple[str, int]:
    """A definition: metadata, schemas, versions, and the submit form."""
    return _page(definition_id)


@bp.route("/definitions/<definition_id>/submit", methods=["POST"])
@requires("tasks:execute")
def submit(definition_id: str) -> Response | tuple[str, int]:
    """Submit a task from the form; the API's checks answer here as an error on the form."""
    form = {k: request.form.get(k, "") for k in ("input", "priority", "workflowInstanceId")}
    form["delaySeconds"] = request.form.get("delaySeconds", "")
    try:
        body = forms.submission_body(definition_id, form)
        task = forms.submit(current_principal(), body)
    except TaskexecError as exc:
        if isinstance(exc, DefinitionNotFound):
            raise
        return _page(definition_id, status_for(exc), form=form, problem=exc)
    return redirect(url_for("console.task", task_id=str(task.id)), code=303)  # type: ignore[return-value]
