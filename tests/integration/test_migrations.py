"""Migrations: applied in order, once; safe to run twice and from several processes at once."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from shared import db, schema

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_database(backends) -> Iterator[str]:
    """An empty database on the test server, dropped afterwards."""
    server = backends.database_url.rsplit("/", 1)[0]
    name = f"taskexec_migrate_{secrets.token_hex(4)}"
    admin = psycopg2.connect(f"{server}/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def query(dsn: str, sql: str) -> list[tuple]:
    conn = db.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def shipped() -> list[tuple[int, str, str]]:
    found = schema.migrations()
    assert found, "no migrations shipped"
    return found


def test_shipped_migrations_are_numbered_in_order_without_gaps():
    versions = [version for version, _, _ in shipped()]
    assert versions == list(range(1, len(versions) + 1))


def test_migrating_twice_is_a_no_op(fresh_database):
    first = schema.migrate(fresh_database)
    assert first == [name for _, name, _ in shipped()]
    before = query(fresh_database, "SELECT version, name, applied_at FROM schema_migrations")
    assert schema.migrate(fresh_database) == []
    after = query(fresh_database, "SELECT version, name, applied_at FROM schema_migrations")
    assert after == before
    tables = {row[0] for row in query(fresh_database, "SELECT tablename FROM pg_tables")}
    assert {"tasks", "task_definitions", "task_attempts", "api_keys"} <= tables


def test_the_migrate_command_is_safe_to_run_twice(fresh_database):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")}
    env.update(DATABASE_URL=fresh_database, REDIS_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(ROOT))
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "cli", "migrate"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip().splitlines()[-1])
    assert outputs[0].startswith(f"applied {len(shipped())} migration(s)")
    assert outputs[1] == "applied 0 migration(s)"


# Each process imports first, then waits for a common start time, so the migrations really
# run at the same moment rather than one after the other's interpreter start-up.
RACER = """
import json, sys, time
from shared import schema
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(json.dumps(schema.migrate(sys.argv[1])))
"""


def test_concurrent_migrations_apply_each_migration_exactly_once(fresh_database):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time() + 3.0  # generous: interpreters start slowly on a busy machine
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, fresh_database, str(start)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    applied: list[str] = []
    for racer in racers:
        out, err = racer.communicate(timeout=90)
        assert racer.returncode == 0, err  # nobody failed on "relation already exists"
        applied += json.loads(out.strip().splitlines()[-1])
    names = [name for _, name, _ in shipped()]
    assert sorted(applied) == sorted(names)  # between them, each applied once
    rows = query(fresh_database, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == [v for v, _, _ in shipped()]


def test_a_failing_migration_is_rolled_back_and_not_recorded(fresh_database):
    good = (1, "0001_a.sql", "CREATE TABLE a (x integer)")
    bad = (2, "0002_b.sql", "INSERT INTO a VALUES (1); SELECT no_such_function()")
    later = (3, "0003_c.sql", "CREATE TABLE c (x integer)")
    conn = db.connect(fresh_database)
    try:
        with pytest.raises(psycopg2.Error):
            schema.apply_migrations(conn, [good, bad, later])
        # The first one stays; the failed one left nothing behind; the later one never ran.
        assert schema.applied_migrations(conn) == [1]
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM a")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT to_regclass('c')")
            assert cur.fetchone()[0] is None
        conn.rollback()
        # The lock was released: fixed, it goes on from where it stopped.
        fixed = (2, "0002_b.sql", "INSERT INTO a VALUES (1)")
        assert schema.apply_migrations(conn, [good, fixed, later]) == ["0002_b.sql", "0003_c.sql"]
        assert schema.applied_migrations(conn) == [1, 2, 3]
    finally:
        conn.close()
