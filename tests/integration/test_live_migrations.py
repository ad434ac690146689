"""Migrations a large live ledger survives: concurrent index builds, outside a transaction.

Index builds on existing tables use CREATE INDEX CONCURRENTLY in files marked
`-- taskexec: no-transaction`; these tests check that the runner applies them (and recovers
from a failed build), that the rewritten 0002-0004 end with the indexes the transactional
originals built, and that submissions go on while every migration runs over a million rows.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest

from shared import db, schema

pytestmark = pytest.mark.integration
NEW_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)
INDEX_BUILD = re.compile(r"CREATE (?:UNIQUE )?INDEX .*? ON (\w+)", re.IGNORECASE)

# 0002-0004 as installs applied them before they were concurrent (commit cb93c7c).
ORIGINAL = {
    2: """
CREATE INDEX tasks_owner_status_created ON tasks (owner, status, created_at DESC, id DESC);
DROP INDEX tasks_owner_created;
CREATE INDEX tasks_owner_created ON tasks (owner, created_at DESC, id DESC)
    INCLUDE (status, type, task_definition_id);
DROP INDEX tasks_workflow;
CREATE INDEX tasks_workflow ON tasks (workflow_instance_id, created_at DESC, id DESC)
    WHERE workflow_instance_id IS NOT NULL;
""",
    3: """
CREATE INDEX task_attempts_open ON task_attempts (task_id, attempt) WHERE ended_at IS NULL;
""",
    4: """
ALTER TABLE tasks ADD COLUMN run_at timestamptz;
CREATE INDEX tasks_release_due ON tasks (next_attempt_at)
    WHERE published_at IS NULL AND status IN ('PENDING', 'RETRYING');
""",
}


@pytest.fixture
def new_database(backends) -> Iterator[Callable[[], str]]:
    """Make empty databases on the test server; all dropped afterwards."""
    server = backends.database_url.rsplit("/", 1)[0]
    admin = psycopg2.connect(f"{server}/postgres")
    admin.autocommit = True
    made: list[str] = []

    def make() -> str:
        name = f"taskexec_live_{secrets.token_hex(4)}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{server}/{name}"

    try:
        yield make
    finally:
        with admin.cursor() as cur:
            for name in made:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def rows(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = db.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def apply(dsn: str, migrations: list[tuple[int, str, str]]) -> list[str]:
    conn = db.connect(dsn)
    try:
        return schema.apply_migrations(conn, migrations)
    finally:
        conn.close()


def indexes(dsn: str) -> list[tuple]:
    return rows(
        dsn,
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " ORDER BY tablename, indexname",
    )


def invalid_indexes(dsn: str) -> list[tuple]:
    return rows(dsn, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")


def test_index_builds_on_existing_tables_are_concurrent():
    for version, name, sql in schema.migrations():
        if version == 1:
            continue  # creates the tables it indexes: nothing to block yet
        statements = [" ".join(s.split()) for s in schema.statements(sql)]
        created = {m.group(1) for s in statements if (m := NEW_TABLE.match(s))}
        for statement in statements:
            build = INDEX_BUILD.match(statement)
            if build and build.group(1) not in created:  # a table of this file is empty
                assert "CONCURRENTLY" in statement.upper(), f"{name}: {statement}"
                assert schema.is_no_transaction(sql), name


def test_an_install_that_applied_the_original_0002_ends_like_a_new_one(new_database):
    shipped = schema.migrations()
    old, new = new_database(), new_database()
    # An existing install: 0001-0004 applied as they were, recorded; then it upgrades.
    originals = [(v, n, ORIGINAL.get(v, sql)) for v, n, sql in shipped if v <= 4]
    assert apply(old, originals) == [n for v, n, _ in shipped if v <= 4]
    upgraded = schema.migrate(old)
    assert upgraded == [n for v, n, _ in shipped if v > 4]  # 0002-0004 are not run again
    assert schema.migrate(new) == [n for _, n, _ in shipped]
    assert indexes(old) == indexes(new)
    assert invalid_indexes(new) == []
    columns = "SELECT table_name, column_name, data_type FROM information_schema.columns"
    columns += " WHERE table_schema = 'public' ORDER BY 1, 2"
    assert rows(old, columns) == rows(new, columns)


def test_a_failed_concurrent_build_is_not_recorded_and_its_invalid_index_is_rebuilt(
    new_database,
):
    dsn = new_database()
    table = (1, "0001_t.sql", "CREATE TABLE t (x integer); INSERT INTO t VALUES (1), (1), (2)")
    unique = (
        2,
        "0002_u.sql",
        "-- taskexec: no-transaction\n"
        "-- a comment; with a semicolon\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x_plain ON t (x);\n",
    )
    with pytest.raises(psycopg2.errors.UniqueViolation):
        apply(dsn, [table, unique])
    assert rows(dsn, "SELECT version FROM schema_migrations") == [(1,)]
    assert invalid_indexes(dsn) == [("t_x",)]  # what a failed concurrent build leaves
    rows(dsn, "DELETE FROM t WHERE ctid = (SELECT min(ctid) FROM t WHERE x = 1) RETURNING x")
    # IF NOT EXISTS alone would keep the broken index; the runner drops and rebuilds it.
    assert apply(dsn, [table, unique]) == ["0002_u.sql"]
    assert invalid_indexes(dsn) == []
    names = [r[1] for r in indexes(dsn)]
    assert "t_x" in names and "t_x_plain" in names
    assert apply(dsn, [table, unique]) == []


def test_statements_are_split_with_comments_removed():
    sql = "-- taskexec: no-transaction\n-- why; because\nSELECT 1;\n\nSELECT 2 -- two\n;"
    assert schema.is_no_transaction(sql)
    assert schema.statements(sql) == ["SELECT 1", "SELECT 2"]
    assert not schema.is_no_transaction("SELECT 1; -- taskexec: no-transaction")


# ------------------------------------------------------------------ a million rows, live

MILLION = 1_000_000
# Written with the columns of 0001, as the version deployed before the upgrade writes them.
SUBMIT = (
    "INSERT INTO tasks (id, owner, task_definition_id, definition_version, type, status,"
    " priority, executor, input, timeout_ms, retry_policy, published_at)"
    " VALUES (%s, 'alice', 'echo', '1.0.0', 'AUTOMATED', 'PENDING', 1, 'standard-executor',"
    " '{}', 60000, '{}', now())"
)


def fill(dsn: str, count: int) -> None:
    """A ledger of `count` finished tasks over 30 days, one attempt each, in two statements."""
    conn = db.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO tasks (id, owner, task_definition_id, definition_version,
                    workflow_instance_id, type, status, priority, executor, input, timeout_ms,
                    retry_policy, attempts, start_time, end_time, published_at, created_at,
                    updated_at)
                SELECT md5(i::text)::uuid, 'owner-' || (i %% 50), 'def-' || (i %% 20), '1.0.0',
                    CASE WHEN i %% 3 = 0 THEN 'wf-' || (i %% 10000) END, 'AUTOMATED',
                    (ARRAY['COMPLETED', 'COMPLETED', 'FAILED', 'CANCELLED'])[i %% 4 + 1],
                    i %% 4, 'standard-executor', '{"n": 1}', 60000, '{}', 1, at, at, at, at, at
                FROM generate_series(1, %s) i,
                    LATERAL (SELECT now() - (i %% 2592000) * interval '1 second' AS at) t
                """,
                (count,),
            )
            cur.execute(
                "INSERT INTO task_attempts (task_id, attempt, status, started_at, ended_at)"
                " SELECT id, 1, status, start_time, end_time FROM tasks"
            )
            cur.execute("VACUUM ANALYZE tasks")
            cur.execute("VACUUM ANALYZE task_attempts")
    finally:
        conn.close()


class Submitter(threading.Thread):
    """Submits tasks one after another until stopped, timing each."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = db.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    started = time.perf_counter()
                    try:
                        cur.execute(SUBMIT, (uuid.uuid4(),))
                    except psycopg2.Error as exc:
                        self.errors.append(exc)
                        return
                    self.latencies.append(time.perf_counter() - started)
                    time.sleep(0.005)
        finally:
            conn.close()


@pytest.mark.slow
def test_every_migration_over_a_million_rows_while_submissions_go_on(new_database):
    dsn = new_database()
    shipped = schema.migrations()
    assert apply(dsn, shipped[:1]) == [shipped[0][1]]
    fill(dsn, MILLION)
    submitter = Submitter(dsn)
    submitter.start()
    try:
        time.sleep(0.5)  # the baseline: submissions already flowing
        started = time.monotonic()
        applied = schema.migrate(dsn)
        took = time.monotonic() - started
        time.sleep(0.5)
    finally:
        submitter.stop.set()
        submitter.join(30)
    assert applied == [name for _, name, _ in shipped[1:]]
    assert submitter.errors == []
    latencies = submitter.latencies
    # Every index over the million rows was built meanwhile (seconds), and no submission
    # waited on it: a plain CREATE INDEX would have held each one for the whole build.
    assert took > 1.0, took
    assert len(latencies) > took * 20, (len(latencies), took)
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    assert invalid_indexes(dsn) == []
    count = rows(dsn, "SELECT count(*) FROM tasks")[0][0]
    assert count == MILLION + len(latencies)
