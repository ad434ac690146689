"""Database migrations: numbered SQL files found, then applied in order, once, under a lock."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources

from shared import db
from shared.store import Conn

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK = 0x7461736B  # "task": one advisory lock id for every migrating process


def migrations() -> list[tuple[int, str, str]]:
    """Return the shipped migrations as (version, name, sql), in order."""
    found = []
    for entry in resources.files("shared.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations to the database at `dsn`; return the names applied."""
    conn = db.connect(dsn)
    try:
        return apply_migrations(conn, migrations())
    finally:
        conn.close()


def apply_migrations(conn: Conn, migrations: Sequence[tuple[int, str, str]]) -> list[str]:
    """Apply the (version, name, sql) migrations not yet recorded; return the names applied.

    A session-level advisory lock makes concurrent callers wait for each other, so the
    second one finds everything applied.
    """
    applied: list[str] = []
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        conn.commit()
        for version, name, sql in sorted(migrations):
            if version in done:
                continue
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
            conn.commit()
            applied.append(name)
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        conn.autocommit = False
    return applied


def applied_migrations(conn: Conn) -> list[int]:
    """List the applied migration versions (empty before the first)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return []
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [r[0] for r in cur.fetchall()]
