"""The task definition endpoints under /api/v1/tasks/definitions (seed 004)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from marshmallow import RAISE

from api import openapi
from api.auth import requires
from api.pagination import page_doc
from api.parsing import Blueprint
from api.responses.definitions import (
    DefinitionListSchema,
    DefinitionSchema,
    definition_json,
    definition_summary,
)
from api.schemas import ListDefinitionsQuery
from api.services import services
from shared import store
from shared.errors import DefinitionNotFound

blp = Blueprint(
    "definitions",
    __name__,
    url_prefix="/api/v1/tasks/definitions",
    description="Browse the task definitions the workers publish",
)


@blp.route("", methods=["GET"], strict_slashes=False)
@requires("tasks:definitions:list")
@blp.arguments(ListDefinitionsQuery, location="query", unknown=RAISE)
@blp.doc(
    operationId="listDefinitions",
    responses=openapi.responses({200: openapi.ok(DefinitionListSchema, "A page of definitions")}),
)
def list_definitions(query: dict[str, Any]) -> Response:
    """List task definitions in id order, filtered by `type` and a text `search`.

    Query: type=AUTOMATED & search=order (case-insensitive, in name or description)
           & page=1 & limit=20 (1..100)
    Response 200:
        {"items": [{"id": "calculate-order-total", "name": "Calculate Order Total",
                    "description": "Calculates the total price of an order including taxes",
                    "type": "AUTOMATED", "version": "1.2.0"}, …],
         "pagination": {"page": 1, "limit": 20, "totalItems": 15, "totalPages": 1}}
    Errors: 400 naming the parameter (unknown type, page < 1, limit outside 1..100).
    """
    page, limit = query["page"], query["limit"]
    with services().db.connection() as conn:
        rows, total = store.list_definitions(
            conn,
            type_=query.get("type"),
            search=(query.get("search") or "").strip() or None,
            limit=limit,
            offset=(page - 1) * limit,
        )
    items = [definition_summary(r) for r in rows]
    return jsonify({"items": items, "pagination": page_doc(page, limit, total)})


@blp.route("/<definition_id>", methods=["GET"])
@requires("tasks:definitions:read")
@blp.doc(
    operationId="getDefinition",
    responses=openapi.responses(
        {200: openapi.ok(DefinitionSchema, "The definition's newest version")}, 404
    ),
)
def get_definition(definition_id: str) -> Response:
    """Get the newest version of one definition in full, as in the seed.

    Response 200:
        {"id": "calculate-order-total", "name": "…", "description": "…", "type": "AUTOMATED",
         "version": "1.2.0", "inputSchema": {…}, "outputSchema": {…}, "timeout": 60000,
         "retryPolicy": {"maxRetries": 3, "retryInterval": 60000, "backoffMultiplier": 2},
         "executionConfig": {"executor": "standard-executor",
                             "securityContext": {"securityLevel": "LOW"},
                             "resourceRequirements": {"cpu": "0.1", "memory": "128Mi",
                                                      "timeoutSeconds": 60}},
         "defaultConfig": {}, "createdAt": "…", "updatedAt": "…",
         "versions": ["1.0.0", "1.2.0"]}
    `versions` lists every version ever published, oldest first; tasks record theirs as
    `definitionVersion`. Errors: 404 NOT_FOUND for an unknown id.
    """
    with services().db.connection() as conn:
        row = store.get_definition(conn, definition_id)
        if row is None:
            raise DefinitionNotFound(
                f"task definition {definition_id!r} not found", {"definitionId": definition_id}
            )
        versions = store.definition_versions(conn, definition_id)
    return jsonify(definition_json(row, versions))
