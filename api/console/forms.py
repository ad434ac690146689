"""Reading the console's forms: JSON fields, and a task submission checked as the API checks it."""

from __future__ import annotations

import json
import math
from typing import Any

from marshmallow import ValidationError as SchemaError

from api import submission
from api.errors import field_errors
from api.schemas import SubmitTaskSchema
from api.services import services
from shared import store, task_rows
from shared.credentials import Principal
from shared.errors import ValidationError


def parse_json(text: str, field: str) -> Any:
    """Parse a form's JSON field; a 400 naming the field when it is not JSON."""
    try:
        value = json.loads(text or "{}", parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ValidationError(
            f"{field} is not valid JSON: {exc}", {"field": field, "issue": str(exc)}
        ) from exc
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def submission_body(definition_id: str, form: dict[str, str]) -> dict[str, Any]:
    """The body `POST /api/v1/tasks` would get from the console's submit form."""
    body: dict[str, Any] = {
        "taskDefinitionId": definition_id,
        "input": parse_json(form.get("input", ""), "input"),
        "priority": form.get("priority") or "MEDIUM",
    }
    if form.get("workflowInstanceId", "").strip():
        body["workflowInstanceId"] = form["workflowInstanceId"].strip()
    delay = form.get("delaySeconds", "").strip()
    if delay:
        try:
            seconds = float(delay)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise ValidationError(
                "delay must be a number of seconds, 0 or more", {"field": "delaySeconds"}
            )
        body["delay"] = int(seconds * 1000)
    return body


def submit(principal: Principal, body: dict[str, Any]) -> store.Task:
    """Submit as the API does: the envelope by its schema, the input by the definition's."""
    try:
        loaded = SubmitTaskSchema().load(body)
    except SchemaError as exc:
        details = field_errors(exc.messages, "form")
        raise ValidationError("the submission is not valid", details) from exc
    svc = services()
    definition = svc.definitions.get(loaded["taskDefinitionId"])
    row = task_rows.new_task(principal, loaded, definition)
    return submission.submit(svc, principal, [row])[0].task
