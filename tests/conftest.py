"""Test fixtures: real Postgres and Redis (private or isolated), the app, auth, and workers."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from cli.processes import worker_command
from cli.servers import PostgresServer, RedisServer
from config.settings import Settings
from shared import db, schema, store
from shared.credentials import generate_key, mint_token
from workers.definitions import builtin_registry

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-" + "x" * 40
SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI must never silently skip the real-service tests."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _shared_postgres_reachable() -> bool:
    if os.environ.get("TASKEXEC_TEST_PRIVATE_POSTGRES"):
        return False
    try:
        psycopg2.connect(SHARED_POSTGRES, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


@dataclass
class Backends:
    """The Postgres database and Redis server one test session uses."""

    database_url: str
    redis_url: str
    redis: RedisServer
    cleanup: list[Callable[[], None]] = field(default_factory=list)


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """A database of our own (on the local server, or a private server) and a private Redis."""
    base = tmp_path_factory.mktemp("servers")
    cleanup: list[Callable[[], None]] = []
    name = f"taskexec_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        if _shared_postgres_reachable():
            conn = psycopg2.connect(SHARED_POSTGRES)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
            conn.close()
            database_url = f"postgresql://postgres@127.0.0.1:5432/{name}"

            def drop() -> None:
                c = psycopg2.connect(SHARED_POSTGRES)
                c.autocommit = True
                with c.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                c.close()

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
        _unavailable(f"cannot provide Postgres/Redis for tests: {exc}")
        raise
    schema.migrate(database_url)
    conn = db.connect(database_url)
    with conn:
        store.publish_definitions(conn, builtin_registry())
    conn.close()
    yield Backends(database_url, redis.url, redis, cleanup)
    for fn in reversed(cleanup):
        try:
            fn()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "TASKEXEC_JWT_SECRET": settings.jwt_secret,
            "TASKEXEC_LEASE_SECONDS": str(settings.lease_seconds),
            "TASKEXEC_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
            "TASKEXEC_SWEEP_INTERVAL": str(settings.sweep_interval),
            "TASKEXEC_REPUBLISH_AFTER": str(settings.republish_after),
            "TASKEXEC_HARD_TIMEOUT_GRACE": str(settings.hard_timeout_grace),
            "TASKEXEC_CANCEL_GRACE": str(settings.cancel_grace),
            "TASKEXEC_WORKER_EVENTS": "true" if settings.worker_events else "false",
            "TASKEXEC_RATELIMIT_ENABLED": "true" if settings.ratelimit_enabled else "false",
            "TASKEXEC_RATELIMIT_DEFAULT": settings.ratelimit_default,
            "TASKEXEC_RATELIMIT_BULK": settings.ratelimit_bulk,
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture(scope="session")
def base_settings(backends: Backends) -> Settings:
    return Settings(
        database_url=backends.database_url,
        redis_url=backends.redis_url,
        jwt_secret=JWT_SECRET,
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
    conn = db.connect(backends.database_url)
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE tasks, task_attempts, task_logs, idempotency_keys, api_keys")
    conn.close()
    import redis as redis_lib

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


class Auth:
    """Mints credentials for tests: API keys in the database, or signed JWTs."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def key(
        self,
        permissions: list[str] | str = "*",
        owner: str = "alice",
        rate_limit: str | None = None,
    ) -> dict[str, str]:
        perms = [permissions] if isinstance(permissions, str) else permissions
        new = generate_key()
        conn = db.connect(self.database_url)
        with conn:
            store.insert_api_key(
                conn,
                key_id=new.key_id,
                name=f"test-{owner}",
                owner=owner,
                permissions=perms,
                key_hash=new.key_hash,
                rate_limit=rate_limit,
            )
        conn.close()
        return {"X-API-Key": new.secret}

    def token(
        self, permissions: list[str] | str = "*", subject: str = "alice", **kw: Any
    ) -> dict[str, str]:
        perms = [permissions] if isinstance(permissions, str) else permissions
        return {"Authorization": "Bearer " + mint_token(JWT_SECRET, subject, perms, **kw)}


@pytest.fixture
def auth(backends: Backends, clean_db: None) -> Auth:
    return Auth(backends.database_url)


SEED_ORDER = {
    "taskDefinitionId": "calculate-order-total",
    "workflowInstanceId": "order-workflow-789",
    "input": {
        "orderId": "ORD-123",
        "items": [
            {"id": "ITEM-1", "quantity": 2, "price": 10.99},
            {"id": "ITEM-2", "quantity": 1, "price": 24.99},
        ],
    },
}


# ---------------------------------------------------------------- real worker processes


class Processes:
    """Starts worker and sweeper subprocesses for a test and stops them all afterwards."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(
        self, name: str, cmd: list[str], extra_env: dict[str, str] | None
    ) -> subprocess.Popen[bytes]:
        env = settings_env(self.settings)
        env.update(extra_env or {})
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def worker(
        self,
        queues: str = "standard-executor",
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start a real Celery worker (prefork) and wait until it consumes."""
        name = f"w{len(self.procs)}-{uuid.uuid4().hex[:6]}@%h"
        # The same command line as `taskexec worker`, without the start-up chatter between
        # nodes that only slows a test's worker down.
        cmd = [
            *worker_command(queues.split(","), concurrency, name),
            "--without-mingle",
            "--without-gossip",
        ]
        proc = self._spawn("worker", cmd, extra_env)
        if wait:
            self.wait_ready(proc)
        return proc

    def sweeper(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the sweeper process."""
        return self._spawn("beat", [sys.executable, "-m", "cli", "beat"], extra_env)

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        path = proc.log_path  # type: ignore[attr-defined]
        while time.monotonic() < deadline:
            text = Path(path).read_text(errors="replace")
            if " ready." in text:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{Path(path).read_text()[-3000:]}")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)


@pytest.fixture
def processes(settings: Settings, clean_db: None, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path)
    yield procs
    procs.stop_all()


#: The terminal statuses.
FINAL = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}


def task_row(**fields: Any) -> store.NewTask:
    """A PENDING `echo` task row as a submission would write it; `fields` override any column."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "owner": "alice",
        "task_definition_id": "echo",
        "definition_version": "1.0.0",
        "workflow_instance_id": None,
        "type": "AUTOMATED",
        "priority": 1,
        "executor": "standard-executor",
        "input": {},
        "timeout_ms": 60_000,
        "retry_policy": {},
        **fields,
    }
    return store.NewTask(**row)


def submit(client: Any, headers: dict[str, str], definition: str, data: dict, **body: Any) -> str:
    """Submit a task through the API (asserting 201) and return its id."""
    body = {"taskDefinitionId": definition, "input": data, **body}
    response = client.post("/api/v1/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def get(client: Any, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    """Read a task through the API."""
    return dict(client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json())


def wait_for(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; return its value or fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_for_status(
    client: Any, headers: dict[str, str], task_id: str, statuses: set[str], timeout: float = 20
) -> dict[str, Any]:
    """Poll GET /api/v1/tasks/{id} until its status is one of `statuses`; return the task."""
    last: dict[str, Any] = {}

    def done() -> dict[str, Any] | None:
        nonlocal last
        last = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
        return last if last.get("status") in statuses else None

    try:
        return wait_for(done, timeout)
    except AssertionError:
        raise AssertionError(
            f"task {task_id} never reached {statuses}; last seen: {last}"
        ) from None
