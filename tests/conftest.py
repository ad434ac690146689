"""Test fixtures: real Postgres and Redis (private or isolated), the app, auth, and workers.

Helpers that tests import live in tests/helpers.py; this file holds fixtures only.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis as redis_lib

from cli.base import ledger
from cli.servers import PostgresServer, RedisServer
from config.settings import Settings
from shared import schema, store
from tests.helpers import (
    JWT_SECRET,
    SHARED_POSTGRES,
    Auth,
    Backends,
    Processes,
    shared_postgres_reachable,
    unavailable,
)
from workers.definitions import DIAGNOSTICS, load_registry


def _create_shared_database(name: str) -> tuple[str, Callable[[], None]]:
    """CREATE DATABASE name on the machine's server; return its URL and how to drop it."""

    def run(statement: str) -> None:
        with closing(psycopg2.connect(SHARED_POSTGRES)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)

    run(f'CREATE DATABASE "{name}"')
    return (
        f"postgresql://postgres@127.0.0.1:5432/{name}",
        lambda: run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'),
    )


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """A database of our own (on the local server, or a private server) and a private Redis."""
    base = tmp_path_factory.mktemp("servers")
    cleanup: list[Callable[[], None]] = []
    name = f"taskexec_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        if shared_postgres_reachable():
            database_url, drop = _create_shared_database(name)
            cleanup.append(drop)
        else:
            pg = PostgresServer(base / "postgres").start()
            cleanup.append(pg.stop)
            database_url = pg.create_database(name)
        redis = RedisServer(base / "redis").start()
        cleanup.append(redis.stop)
    except Exception as exc:  # noqa: BLE001 - any failure to provide services
        for fn in reversed(cleanup):
            fn()
        unavailable(f"cannot provide Postgres/Redis for tests: {exc}")
    schema.migrate(database_url)
    with ledger(database_url) as conn:
        store.publish_definitions(conn, load_registry(DIAGNOSTICS))
    yield Backends(database_url, redis.url, redis, cleanup)
    for fn in reversed(cleanup):
        try:
            fn()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


@pytest.fixture(scope="session")
def base_settings(backends: Backends) -> Settings:
    return Settings(
        database_url=backends.database_url,
        redis_url=backends.redis_url,
        jwt_secret=JWT_SECRET,
        definition_modules=DIAGNOSTICS,
        ratelimit_enabled=False,
        definition_cache_seconds=0,
        lease_seconds=6,
        heartbeat_seconds=1,
        sweep_interval=0.3,
        republish_after=3,
        hard_timeout_grace=1.5,
        cancel_grace=2,
    )


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Settings for one test; override with `settings.with_overrides(...)` in the test."""
    return base_settings


@pytest.fixture
def clean_db(backends: Backends) -> Iterator[None]:
    """Empty the tables a test writes (definitions stay published) and the private Redis."""
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE tasks, task_attempts, task_logs, idempotency_keys, api_keys, schedules,"
            " webhooks, webhook_event_queue, webhook_events, webhook_deliveries"
        )
    redis_lib.Redis.from_url(backends.redis_url).flushall()
    yield


@pytest.fixture
def app(settings: Settings, clean_db: None) -> Iterator[Any]:
    from api.app import create_app

    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["taskexec"].db.close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def app_with(settings: Settings, clean_db: None) -> Iterator[Callable[..., Any]]:
    """Build apps with overridden settings; close their pools afterwards."""
    from api.app import create_app

    made: list[Any] = []

    def make(**overrides: Any) -> Any:
        application = create_app(settings.with_overrides(**overrides))
        application.config["TESTING"] = True
        made.append(application)
        return application

    yield make
    for application in made:
        application.extensions["taskexec"].db.close()


@pytest.fixture
def auth(backends: Backends, clean_db: None) -> Auth:
    return Auth(backends.database_url)


@pytest.fixture
def processes(settings: Settings, clean_db: None, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path)
    yield procs
    procs.stop_all()
