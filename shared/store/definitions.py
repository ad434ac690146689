"""Published task definitions: the served row per id and the history of every version."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from shared.definitions import TaskDefinition, precedes
from shared.store._rows import Conn, all_, one, scalar


@dataclass(frozen=True)
class DefinitionRow:
    """A published task definition, as the API serves it."""

    id: str
    version: str
    name: str
    description: str
    type: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    timeout_ms: int
    retry_policy: dict[str, Any]
    executor: str
    security_context: dict[str, Any]
    resource_requirements: dict[str, Any]
    default_config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    retention: str | None = None  # a duration overriding TASKEXEC_RETENTION(_FAILED), if any
    concurrency_limit: int | None = None  # at most this many of its tasks RUNNING at once


# The columns a definition writes (TaskDefinition.to_row's keys); the jsonb ones go as Json.
_COLUMNS = (
    "id",
    "version",
    "name",
    "description",
    "type",
    "input_schema",
    "output_schema",
    "timeout_ms",
    "retry_policy",
    "executor",
    "security_context",
    "resource_requirements",
    "default_config",
    "retention",
    "concurrency_limit",
)
_JSONB = frozenset(
    {
        "input_schema",
        "output_schema",
        "retry_policy",
        "security_context",
        "resource_requirements",
        "default_config",
    }
)
_SET = [c for c in _COLUMNS if c != "id"]
# An unchanged definition is not rewritten, so its updated_at says when it last changed.
_UPSERT = (
    f"INSERT INTO task_definitions ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join(f'%({c})s' for c in _COLUMNS)})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _SET)
    + ", updated_at = now()"
    + f" WHERE ({', '.join(f'task_definitions.{c}' for c in _SET)})"
    + f" IS DISTINCT FROM ({', '.join(f'EXCLUDED.{c}' for c in _SET)})"
)


def publish_definitions(conn: Conn, definitions: Iterable[TaskDefinition]) -> None:
    """Upsert definitions; every version is kept in the history table.

    The served row only moves forward: a worker still running an older release (say,
    restarted mid-deploy) records its version in the history but does not roll back the
    definition the API serves.
    """
    with conn.cursor() as cur:
        for definition in definitions:
            doc = definition.to_row()
            cur.execute(
                "INSERT INTO task_definition_versions (id, version, document) VALUES (%s, %s, %s)"
                " ON CONFLICT (id, version) DO UPDATE SET document = EXCLUDED.document",
                (doc["id"], doc["version"], Json(doc)),
            )
            cur.execute("SELECT version FROM task_definitions WHERE id = %s", (doc["id"],))
            served = cur.fetchone()
            if served is not None and precedes(doc["version"], served[0]):
                continue
            cur.execute(_UPSERT, {c: Json(doc[c]) if c in _JSONB else doc[c] for c in _COLUMNS})


def get_definition(conn: Conn, definition_id: str) -> DefinitionRow | None:
    """Return the newest published version of a definition."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM task_definitions WHERE id = %s", (definition_id,))
        return one(cur, DefinitionRow)


def definition_versions(conn: Conn, definition_id: str) -> list[str]:
    """List every version ever published of a definition, oldest first."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT version FROM task_definition_versions WHERE id = %s"
            " ORDER BY published_at, version",
            (definition_id,),
        )
        return [row[0] for row in cur.fetchall()]


def definition_version_document(
    conn: Conn, definition_id: str, version: str
) -> dict[str, Any] | None:
    """Return one published version of a definition (its stored columns), if recorded."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT document FROM task_definition_versions WHERE id = %s AND version = %s",
            (definition_id, version),
        )
        row = cur.fetchone()
        return dict(row[0]) if row else None


def list_definitions(
    conn: Conn, *, type_: str | None, search: str | None, limit: int, offset: int
) -> tuple[list[DefinitionRow], int]:
    """Page through definitions by id; `search` matches name or description, any case."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if type_:
        where.append("type = %s")
        params.append(type_)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(name ILIKE %s OR description ILIKE %s)")
        params += [pattern, pattern]
    clause = " AND ".join(where)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) AS n FROM task_definitions WHERE {clause}", params)
        total = scalar(cur, int)
        cur.execute(
            f"SELECT * FROM task_definitions WHERE {clause} ORDER BY id LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
        return all_(cur, DefinitionRow), total
