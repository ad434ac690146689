"""API keys: stored with their secret only as a hash, revocable, touched at most once a minute."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.store._rows import Conn, all_, one


@dataclass(frozen=True)
class ApiKey:
    """A stored API key (its secret only as a hash)."""

    id: str
    name: str
    owner: str
    permissions: list[str]
    key_hash: str
    rate_limit: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    max_running: int | None = None  # at most this many of the owner's tasks RUNNING at once


def insert_api_key(
    conn: Conn,
    *,
    key_id: str,
    name: str,
    owner: str,
    permissions: Sequence[str],
    key_hash: str,
    rate_limit: str | None,
    max_running: int | None = None,
) -> ApiKey:
    """Store a new API key."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO api_keys (id, name, owner, permissions, key_hash, rate_limit, max_running)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (key_id, name, owner, list(permissions), key_hash, rate_limit, max_running),
        )
        key = one(cur, ApiKey)
        assert key is not None  # an INSERT ... RETURNING returns its row
        return key


def get_api_key(conn: Conn, key_id: str) -> ApiKey | None:
    """Return a key by its public id (prefix)."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM api_keys WHERE id = %s", (key_id,))
        return one(cur, ApiKey)


def list_api_keys(conn: Conn) -> list[ApiKey]:
    """Return every key, oldest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM api_keys ORDER BY created_at")
        return all_(cur, ApiKey)


def revoke_api_key(conn: Conn, key_id: str) -> bool:
    """Revoke a key; say whether it existed and was active."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
            (key_id,),
        )
        return bool(cur.rowcount == 1)


def touch_api_key(conn: Conn, key_id: str, every_seconds: int = 60) -> None:
    """Record a use of a key, at most once per `every_seconds` (keeps the hot path write-free)."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = %s AND (last_used_at IS NULL"
            " OR last_used_at < now() - make_interval(secs => %s))",
            (key_id, every_seconds),
        )


def owner_running_limits(conn: Conn, owners: Collection[str]) -> dict[str, int | None]:
    """The tightest maxRunning among each owner's active keys (None when none sets one).

    Owners without an active key (JWT principals) are absent from the answer.
    """
    if not owners:
        return {}
    with conn.cursor() as cur:
        # min() skips NULLs: an owner limited by any of its keys is held to the smallest.
        cur.execute(
            "SELECT owner, min(max_running) FROM api_keys"
            " WHERE owner = ANY(%s) AND revoked_at IS NULL GROUP BY owner",
            (list(owners),),
        )
        return {owner: limit for owner, limit in cur.fetchall()}
