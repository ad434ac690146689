"""Idempotency keys: which task a client's key produced, for which request, until when."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.store._rows import Conn, one


@dataclass(frozen=True)
class IdempotencyRecord:
    """A remembered submission: which task a key produced, and for which request."""

    owner: str
    key: str
    request_hash: str
    task_id: uuid.UUID
    expires_at: datetime


def get_idempotency(conn: Conn, owner: str, key: str) -> IdempotencyRecord | None:
    """Return the live record of a key, if any."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM idempotency_keys WHERE owner = %s AND key = %s AND expires_at > now()",
            (owner, key),
        )
        return one(cur, IdempotencyRecord)


def claim_idempotency(
    conn: Conn, owner: str, key: str, request_hash: str, task_id: uuid.UUID, ttl: int
) -> IdempotencyRecord:
    """Bind a key to a task unless a live binding exists; return the binding that holds."""
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO idempotency_keys (owner, key, request_hash, task_id, expires_at)
            VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))
            ON CONFLICT (owner, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
                task_id = EXCLUDED.task_id, expires_at = EXCLUDED.expires_at
                WHERE idempotency_keys.expires_at <= now()
            RETURNING *
            """,
            (owner, key, request_hash, task_id, ttl),
        )
        record = one(cur, IdempotencyRecord)
        if record is None:  # a live binding held: the conflict updated nothing
            cur.execute(
                "SELECT * FROM idempotency_keys WHERE owner = %s AND key = %s", (owner, key)
            )
            record = one(cur, IdempotencyRecord)
        assert record is not None  # the conflict found a live binding
        return record


def purge_expired_idempotency(conn: Conn) -> int:
    """Delete expired idempotency records; return how many."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM idempotency_keys WHERE expires_at <= now()")
        return int(cur.rowcount)
