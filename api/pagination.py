"""Paging of lists: page numbers, the `nextCursor` codec, and the `pagination` object."""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields

from shared.errors import ValidationError

#: How deep `page` may go; past it, use `cursor`.
MAX_PAGE = 1_000_000


class PaginationSchema(Schema):
    page = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    totalItems = fields.Integer(required=True)
    totalPages = fields.Integer(required=True)


class TaskPaginationSchema(Schema):
    page = fields.Integer(
        required=True, allow_none=True, metadata={"description": "Null with a cursor"}
    )
    limit = fields.Integer(required=True)
    totalItems = fields.Integer(required=True)
    totalPages = fields.Integer(required=True)
    totalItemsExact = fields.Boolean(required=True, metadata={"description": "False: an estimate"})


def page_doc(page: int | None, limit: int, total: int, exact: bool | None = None) -> dict[str, Any]:
    """The `pagination` object of a list; `exact` (tasks only) says whether `total` is a count."""
    doc: dict[str, Any] = {
        "page": page,
        "limit": limit,
        "totalItems": total,
        "totalPages": math.ceil(total / limit),
    }
    if exact is not None:
        doc["totalItemsExact"] = exact
    return doc


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    """The `nextCursor` after a task: its position in the (createdAt, id) order."""
    raw = f"{created_at.isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def position(query: dict[str, Any]) -> tuple[int | None, tuple[datetime, uuid.UUID] | None]:
    """A list query's page number or cursor position (one of them); 400 when both are given."""
    if "cursor" in query and "page" in query:
        raise ValidationError(
            "give either page or cursor",
            {"field": "cursor", "issue": "cannot be combined with page", "location": "query"},
        )
    if "cursor" in query:
        return None, decode_cursor(query["cursor"])
    return query.get("page", 1), None


def decode_cursor(cursor: str, location: str = "query") -> tuple[datetime, uuid.UUID]:
    """Read a `cursor` parameter back into a position; 400 naming `cursor` if it is not one.

    `location`: where the request carried it (the list's query, or a body).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, tid = raw.partition("|")
        position = datetime.fromisoformat(created), uuid.UUID(tid)
        if position[0].tzinfo is None:
            raise ValueError("no UTC offset")
        # Normalised to UTC: Postgres refuses offsets Python accepts (+17:38, +01:00:30), so a
        # tampered cursor would otherwise reach the query and fail there (500).
        return position[0].astimezone(UTC), position[1]
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise _bad_cursor(location) from exc


def _bad_cursor(location: str = "query") -> ValidationError:
    return ValidationError(
        "invalid cursor",
        {"field": "cursor", "issue": "not a nextCursor from this API", "location": location},
    )
