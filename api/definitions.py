"""The task definition endpoints under /api/v1/tasks/definitions (seed 004)."""

from __future__ import annotations

import math
from typing import Any

from flask import Response, jsonify
from marshmallow import Schema, fields, validate

from api.auth import requires
from api.blueprint import Blueprint
from api.resources import definition_json, definition_summary
from api.schemas import TYPES
from api.services import services
from shared import store
from shared.errors import DefinitionNotFound

blp = Blueprint(
    "definitions",
    __name__,
    url_prefix="/api/v1/tasks/definitions",
    description="Browse the task definitions the workers publish",
)


class ListDefinitionsQuery(Schema):
    type = fields.String(validate=validate.OneOf(TYPES))
    search = fields.String(validate=validate.Length(min=1, max=200))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


@blp.route("", methods=["GET"], strict_slashes=False)
@requires("tasks:definitions:list")
@blp.arguments(ListDefinitionsQuery, location="query")
def list_definitions(query: dict[str, Any]) -> Response:
    """List task definitions by id, filtered by `type` and a text `search`.

    Response 200: {"items": [{"id", "name", "description", "type", "version"}], "pagination": {...}}
    """
    page, limit = query["page"], query["limit"]
    with services().db.connection() as conn:
        rows, total = store.list_definitions(
            conn,
            type_=query.get("type"),
            search=query.get("search"),
            limit=limit,
            offset=(page - 1) * limit,
        )
    return jsonify(
        {
            "items": [definition_summary(r) for r in rows],
            "pagination": {
                "page": page,
                "limit": limit,
                "totalItems": total,
                "totalPages": math.ceil(total / limit),
            },
        }
    )


@blp.route("/<definition_id>", methods=["GET"])
@requires("tasks:definitions:read")
def get_definition(definition_id: str) -> Response:
    """Get one definition in full: schemas, timeout, retry policy, execution config.

    Response 200: the seed's definition document plus `versions` (every version published).
    Errors: 404 unknown definition.
    """
    with services().db.connection() as conn:
        row = store.get_definition(conn, definition_id)
        if row is None:
            raise DefinitionNotFound(f"task definition {definition_id!r} not found")
        versions = store.definition_versions(conn, definition_id)
    doc = definition_json(row)
    doc["versions"] = versions
    return jsonify(doc)
