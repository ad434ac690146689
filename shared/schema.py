"""Database migrations: numbered SQL files applied in order, once, under a lock."""

from __future__ import annotations

import re
from importlib import resources

from shared import db, store

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


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
        return store.apply_migrations(conn, migrations())
    finally:
        conn.close()
