"""The system under fault: private Postgres and Redis, real Celery workers and the sweeper."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extensions
import redis as redis_lib

from cli.servers import PostgresServer, RedisServer
from config.settings import Settings
from shared import schema, store
from tests.helpers import JWT_SECRET, ROOT, settings_env
from workers.definitions import load_registry, with_diagnostics

QUEUE = "standard-executor"
#: The test-only definitions (the poison task), loaded by workers through the setting.
DEFINITION_MODULE = with_diagnostics("tests.reliability.poison")

#: Short leases and sweeps so that a lost worker is noticed in seconds, not a minute.
SUITE_SETTINGS = {
    "lease_seconds": 4,
    "heartbeat_seconds": 1.0,
    "sweep_interval": 0.3,
    "republish_after": 3,
    "hard_timeout_grace": 1.5,
    "cancel_grace": 2.0,
    "max_worker_lost": 3,
    "ratelimit_enabled": True,
    "ratelimit_default": "1000000/minute",
    "ratelimit_bulk": "1000000/minute",
    "definition_cache_seconds": 5,
    "db_connect_timeout": 2,
    # The partition suite reads what each delivery returned from Celery's per-task lines.
    "worker_task_log": True,
}


class Servers:
    """A private Postgres cluster and Redis server that the suite may kill and restart."""

    def __init__(self, base: Path) -> None:
        self.postgres = PostgresServer(base / "postgres")
        self.redis = RedisServer(base / "redis")
        self.database_url = ""

    def start(self) -> Servers:
        self.postgres.start()
        self.redis.start()
        self.database_url = self.postgres.create_database("taskexec_reliability")
        schema.migrate(self.database_url)
        with contextlib.closing(psycopg2.connect(self.database_url)) as conn, conn:
            store.publish_definitions(conn, load_registry(DEFINITION_MODULE))
        return self

    def ensure_running(self) -> None:
        """Bring back whatever a previous scenario left stopped."""
        if not self.postgres.is_running():
            self.postgres.start()
        if not self.redis.is_running():
            self.redis.start()

    def reset(self) -> None:
        """Empty the ledger (definitions stay) and the broker."""
        self.ensure_running()
        with contextlib.closing(psycopg2.connect(self.database_url)) as conn, conn:
            with conn.cursor() as cur:
                cur.execute(
                    "TRUNCATE tasks, task_attempts, task_logs, idempotency_keys, api_keys CASCADE"
                )
        redis_lib.Redis.from_url(self.redis.url).flushall()

    def stop(self) -> None:
        for server in (self.redis, self.postgres):
            with contextlib.suppress(Exception):
                server.stop()

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {**SUITE_SETTINGS, **overrides}
        return Settings(
            database_url=self.database_url,
            redis_url=self.redis.url,
            jwt_secret=JWT_SECRET,
            **values,  # type: ignore[arg-type]
        )


def parent_of(pid: int) -> int | None:
    """Return the parent pid of a live process (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[1])


def children_of(pid: int) -> list[int]:
    """Return the live child processes of `pid` (a Celery worker's pool children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and parent_of(int(entry)) == pid:
            found.append(int(entry))
    return sorted(found)


def alive(pid: int) -> bool:
    return parent_of(pid) is not None


@dataclass
class Worker:
    """One `celery worker` process (its pool children are found through /proc)."""

    name: str
    concurrency: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    incarnations: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        return children_of(self.pid) if self.running() else []

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


class Cluster:
    """Starts, kills and restarts the service's processes for one scenario."""

    def __init__(self, settings: Settings, log_dir: Path, extra_env: dict[str, str]) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.env = {**settings_env(settings), **extra_env}
        self.workers: list[Worker] = []
        self.sweepers: list[subprocess.Popen[bytes]] = []
        self._spawned: list[subprocess.Popen[bytes]] = []

    def _spawn(self, label: str, cmd: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.log_dir / f"{label}-{len(self._spawned)}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: teardown kills orphaned children too
            )
        self._spawned.append(proc)
        return proc, path

    # ------------------------------------------------------------ workers

    def _worker_command(self, name: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
            "--loglevel", "INFO", "-Q", QUEUE, "--concurrency", str(concurrency),
            "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
        ]  # fmt: skip

    def start_worker(self, concurrency: int = 2, wait: bool = True) -> Worker:
        """Start a real prefork worker; with `wait`, return once it consumes."""
        name = f"rel-{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        proc, path = self._spawn(name, self._worker_command(name, concurrency))
        worker = Worker(name, concurrency, proc, path, [proc.pid])
        self.workers.append(worker)
        if wait:
            self.wait_ready([worker])
        return worker

    def start_workers(self, count: int, concurrency: int = 2) -> list[Worker]:
        started = [self.start_worker(concurrency, wait=False) for _ in range(count)]
        self.wait_ready(started)
        return started

    def wait_ready(self, workers: list[Worker], timeout: float = 60) -> None:
        """Wait until each worker logged ` ready.` and has its full pool of children."""
        deadline = time.monotonic() + timeout
        pending = list(workers)
        while pending:
            for worker in list(pending):
                text = worker.log_path.read_text(errors="replace")
                if " ready." in text and len(worker.children()) >= worker.concurrency:
                    pending.remove(worker)
                elif not worker.running():
                    raise RuntimeError(f"worker {worker.name} exited:\n{worker.log_tail()}")
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready in {timeout}s:\n{pending[0].log_tail()}")
            time.sleep(0.1)

    def restart_worker(self, worker: Worker, wait: bool = True) -> Worker:
        """Start the same worker (same node name) again after it died."""
        self.reap(worker)
        proc, path = self._spawn(worker.name, self._worker_command(worker.name, worker.concurrency))
        worker.proc, worker.log_path = proc, path
        worker.incarnations.append(proc.pid)
        if wait:
            self.wait_ready([worker])
        return worker

    def kill_main(self, worker: Worker) -> list[int]:
        """SIGKILL a worker's main process only; return its children at that moment."""
        children = worker.children()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait(10)
        return children

    def reap(self, worker: Worker) -> None:
        """Kill whatever is left of a dead worker's process group (orphaned children)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(10)

    def terminate(self, worker: Worker, timeout: float = 60) -> float:
        """SIGTERM a worker (warm shutdown) and wait for it to exit; return how long it took."""
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(timeout)
        return time.monotonic() - started

    def pool_children(self) -> dict[int, Worker]:
        """Map every live pool child pid to its worker."""
        return {child: w for w in self.workers if w.running() for child in w.children()}

    def pick_child(self, busy: set[int], rng: random.Random) -> int | None:
        """Choose a pool child to kill, preferring one that is running an attempt."""
        children = self.pool_children()
        candidates = sorted(set(children) & busy) or sorted(children)
        return rng.choice(candidates) if candidates else None

    # ------------------------------------------------------------ sweeper

    def start_sweeper(self) -> subprocess.Popen[bytes]:
        proc, _ = self._spawn("sweeper", [sys.executable, "-m", "cli", "sweeper"])
        self.sweepers.append(proc)
        return proc

    # ------------------------------------------------------------ teardown

    def stop_all(self) -> None:
        """Stop every process this cluster started, the whole process group of each."""
        for proc in self._spawned:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self._spawned:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(deadline - time.monotonic(), 0.1))
        for proc in self._spawned:
            # Orphaned pool children may outlive their main process: clear the whole group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def connect(database_url: str, timeout: float = 30) -> psycopg2.extensions.connection:
    """Open an autocommit connection for the test's own observations, waiting for Postgres."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = psycopg2.connect(database_url, connect_timeout=2)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
