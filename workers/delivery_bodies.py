"""The bodies of webhook events: each event's task document rendered once for its deliveries."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import orjson

from shared import store
from shared.db import Database
from shared.retention import Retention
from shared.task_document import task_from_snapshot, task_json
from shared.webhook_signing import event_body

#: Definitions' retention overrides are read again after this many seconds (expiresAt).
DEFINITIONS_TTL_SECONDS = 10.0

#: Every digit as "0" (bytes.translate), to find a run of digits in one C call.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else b for b in range(256))
#: A number this long may not fit 64 bits (orjson then makes it a float; json keeps it).
_LONG_NUMBER = b"0" * 19


def decode_snapshot(text: str) -> Any:
    """A snapshot's JSON text as json.loads reads it, by orjson when that reads it the same.

    orjson takes a third of the time, but reads an integer beyond 64 bits as a float, where
    json.loads keeps it exact (a task's input or output may hold one: Postgres's jsonb keeps
    any number as written). So text with a run of 19 digits or more anywhere (in a string
    too: a false yes costs only the slower reader) goes to json.loads. What else orjson
    refuses (NaN, a lone surrogate) jsonb cannot hold; it would go to json.loads too.
    """
    raw = text.encode()
    if raw.translate(_DIGITS_AS_ZERO).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


class EventBodies:
    """Renders claimed deliveries' bodies, with the definitions' retentions cached briefly."""

    def __init__(self, database: Database, task_retention: Retention) -> None:
        self.db = database
        self.task_retention = task_retention
        self._definitions: dict[str, str | None] = {}
        self._definitions_at = 0.0

    def render(self, claimed: list[store.Claimed]) -> dict[uuid.UUID, bytes]:
        """Each claimed event's body, once per event (its subscriptions get the same bytes)."""
        snapshots = {c.event_id: c for c in claimed if c.task is not None}
        task_ids = [c.task_id for c in snapshots.values() if c.task_id is not None]
        attempts: dict[uuid.UUID, list[Any]] = {}
        retries: dict[uuid.UUID, list[uuid.UUID]] = {}
        if task_ids:
            with self.db.connection(autocommit=True) as conn:
                attempts, retries = store.attempts_and_retries_of_tasks(conn, task_ids)
                overrides = self._retentions(conn)
        bodies: dict[uuid.UUID, bytes] = {}
        for item in claimed:
            if item.event_id in bodies:
                continue
            if item.task is None:
                data: Any = item.data or {}
            else:
                task = task_from_snapshot(decode_snapshot(item.task))
                # The attempts the task had made at the change (a later retry's are not).
                made = [a for a in attempts.get(task.id, []) if a.attempt <= task.attempts]
                if task.task_definition_id in overrides:
                    expires = self.task_retention.expires_at(
                        task.status, task.end_time, task.pinned, overrides[task.task_definition_id]
                    )
                else:
                    expires = None  # as the API: a task whose definition is gone is kept
                data = task_json(task, made, retries.get(task.id, []), expires_at=expires)
            bodies[item.event_id] = event_body(item.type, item.event_created_at, data)
        return bodies

    def _retentions(self, conn: store.Conn) -> dict[str, str | None]:
        if time.monotonic() - self._definitions_at > DEFINITIONS_TTL_SECONDS:
            self._definitions = store.definition_retentions(conn)
            self._definitions_at = time.monotonic()
        return self._definitions
