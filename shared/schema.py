"""Database migrations: numbered SQL files found, then applied in order, once, under a lock.

A file whose first line is `-- taskexec: no-transaction` runs outside a transaction, one
statement at a time in autocommit (for CREATE INDEX CONCURRENTLY, which a transaction refuses),
still under the advisory lock. Such a file must be safe to run again after failing halfway
(IF NOT EXISTS, IF EXISTS), and may hold only plain statements: it is split at semicolons, so
no semicolon in a string, a dollar-quoted body or a comment. An index a failed concurrent build
left INVALID is dropped before the statement that builds it runs again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from importlib import resources

from shared import db
from shared.store import Conn, Cursor

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK = 0x7461736B  # "task": one advisory lock id for every migrating process
_LOCK_POLL = 0.1  # seconds between two tries for the lock
NO_TRANSACTION = "-- taskexec: no-transaction"
_CONCURRENT_INDEX = re.compile(
    r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w.]+)",
    re.IGNORECASE,
)


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
    _lock(conn)
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
                if is_no_transaction(sql):
                    _run_in_autocommit(conn, statements(sql))
                else:
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


def _lock(conn: Conn) -> None:
    """Take the migration lock, asking again every 0.1 s rather than waiting in a statement.

    A waiter blocked inside `pg_advisory_lock` holds a snapshot, and CREATE INDEX
    CONCURRENTLY in the session that holds the lock waits for every older snapshot to end:
    a deadlock. Between two short tries the waiter holds nothing.
    """
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATION_LOCK,))
            row = cur.fetchone()
            if row and row[0]:
                return
            time.sleep(_LOCK_POLL)


def is_no_transaction(sql: str) -> bool:
    """Say whether a migration asks to run outside a transaction (its first line says so)."""
    return sql.lstrip().startswith(NO_TRANSACTION)


def statements(sql: str) -> list[str]:
    """Split a no-transaction migration into its statements, comments removed."""
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [part.strip() for part in text.split(";") if part.strip()]


def _run_in_autocommit(conn: Conn, sqls: Sequence[str]) -> None:
    """Run statements one by one, each its own transaction (the advisory lock stays held)."""
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for sql in sqls:
                match = _CONCURRENT_INDEX.match(sql)
                if match:
                    _drop_if_invalid(cur, match.group(1))
                cur.execute(sql)
    finally:
        conn.autocommit = False


def _drop_if_invalid(cur: Cursor, index: str) -> None:
    """Drop `index` if a failed concurrent build left it INVALID.

    Such an index is not used by queries yet still maintained by every write, and
    IF NOT EXISTS would keep it as it is; built again, it is whole.
    """
    cur.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (index,))
    row = cur.fetchone()
    if row and row[0]:
        cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")


def applied_migrations(conn: Conn) -> list[int]:
    """List the applied migration versions (empty before the first)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return []
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [r[0] for r in cur.fetchall()]
