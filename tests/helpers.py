"""What tests import: constants, service discovery, credentials, worker processes, polling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import psycopg2
import pytest

from cli.base import ledger
from cli.processes import worker_command
from cli.servers import RedisServer
from config.settings import Settings
from shared import store
from shared.credentials import issue_key, mint_token

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-" + "x" * 40
SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

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


# ---------------------------------------------------------------- services


def unavailable(reason: str) -> NoReturn:
    """Skip locally, fail in CI: CI must never silently skip the real-service tests."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def shared_postgres_reachable() -> bool:
    """Whether the machine's PostgreSQL answers on 127.0.0.1:5432 (and we may use it)."""
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


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")}
    return {**env, **settings.to_env(), "PYTHONPATH": str(ROOT)}


# ---------------------------------------------------------------- credentials


class Auth:
    """Mints credentials for tests: API keys in the database, or signed JWTs."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def key(
        self,
        permissions: list[str] | str = "*",
        owner: str = "alice",
        rate_limit: str | None = None,
        max_running: int | None = None,
    ) -> dict[str, str]:
        perms = [permissions] if isinstance(permissions, str) else permissions
        with ledger(self.database_url) as conn:
            _, secret = issue_key(
                conn,
                name=f"test-{owner}",
                owner=owner,
                permissions=perms,
                rate_limit=rate_limit,
                max_running=max_running,
            )
        return {"X-API-Key": secret}

    def token(
        self, permissions: list[str] | str = "*", subject: str = "alice", **kw: Any
    ) -> dict[str, str]:
        perms = [permissions] if isinstance(permissions, str) else permissions
        return {"Authorization": "Bearer " + mint_token(JWT_SECRET, subject, perms, **kw)}


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
        return self._spawn("sweeper", [sys.executable, "-m", "cli", "sweeper"], extra_env)

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


# ---------------------------------------------------------------- tasks


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
    client: Any,
    headers: dict[str, str],
    task_id: str,
    statuses: Collection[str],
    timeout: float = 20,
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
        wanted = sorted(str(s) for s in statuses)
        raise AssertionError(f"task {task_id} never reached {wanted}; last seen: {last}") from None
