"""Task logs: the lines a handler writes through its context, read back a page at a time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.store._rows import Conn, all_


@dataclass(frozen=True)
class LogLine:
    """One line a handler logged through its context."""

    seq: int
    attempt: int
    level: str
    message: str
    created_at: datetime


def append_log(conn: Conn, task_id: uuid.UUID, attempt: int, level: str, message: str) -> None:
    """Append one line to a task's log."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO task_logs (task_id, attempt, level, message) VALUES (%s, %s, %s, %s)",
            (task_id, attempt, level, message),
        )


def task_logs(conn: Conn, task_id: uuid.UUID, *, after: int, limit: int) -> list[LogLine]:
    """Return a task's log lines with `seq` above `after`, oldest first (the primary key range)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT seq, attempt, level, message, created_at FROM task_logs"
            " WHERE task_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (task_id, after, limit),
        )
        return all_(cur, LogLine)
