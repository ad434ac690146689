"""The benchmark's own world: a fresh database, a private Redis and the processes under test."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import redis

from cli.base import ledger
from cli.servers import PostgresServer, RedisServer, free_port
from config.settings import Settings
from shared import schema, store
from shared.credentials import issue_key
from workers.definitions import DIAGNOSTICS, load_registry

ROOT = Path(__file__).resolve().parent.parent
SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICE_QUEUE = "standard-executor"
BASELINE_QUEUE = "bench-baseline"
HUGE_RATE = "100000000/minute"  # the limiter stays in the request path but never refuses
# For the submit figure, which runs no worker: without one the dispatch window holds its
# minimum (20 messages) and every later submission would wait in Postgres unpublished, sparing
# the service the publish that Flower and the Flask baseline make for every request.
OPEN_WINDOW = {"TASKEXEC_DISPATCH_WINDOW_MIN": "1000000000"}

# The baseline's table: what a user without the service would store per task.
BASELINE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_tasks (
    id          uuid PRIMARY KEY,
    status      text NOT NULL,
    input       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
)
"""


@dataclass
class Proc:
    """One child process under test and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    def log_text(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(errors="replace")


class Stack:
    """Starts backends and processes for one benchmark run and tears all of them down."""

    def __init__(
        self,
        workdir: Path,
        *,
        api_workers: int,
        api_threads: int,
        private_postgres: bool = False,
    ) -> None:
        self.workdir = workdir
        self.api_workers = api_workers
        self.api_threads = api_threads
        self.private_postgres = private_postgres
        self.database_url = ""
        self.redis_url = ""
        self.api_key = ""
        self.postgres_note = ""
        self.procs: list[Proc] = []
        self._cleanup: list[tuple[str, object]] = []
        self._db_name = f"taskexec_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self._pg: PostgresServer | None = None
        self._redis: RedisServer | None = None
        self._jwt_secret = secrets.token_urlsafe(48)

    # ------------------------------------------------------------ backends

    def start_backends(self) -> None:
        """Create a fresh database and a private Redis; migrate; make an API key."""
        if not self.private_postgres and _reachable(SHARED_POSTGRES):
            with contextlib.closing(psycopg2.connect(SHARED_POSTGRES)) as conn:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f'CREATE DATABASE "{self._db_name}"')
            self.database_url = f"postgresql://postgres@127.0.0.1:5432/{self._db_name}"
            self.postgres_note = "local server 127.0.0.1:5432 (fresh database)"
        else:
            self._pg = PostgresServer(self.workdir / "postgres").start()
            self.database_url = self._pg.create_database(self._db_name)
            self.postgres_note = "private server (cli/servers.PostgresServer)"
        self._redis = RedisServer(self.workdir / "redis").start()
        self.redis_url = self._redis.url
        schema.migrate(self.database_url)
        with ledger(self.database_url) as conn:
            store.publish_definitions(conn, load_registry(DIAGNOSTICS))
            _, self.api_key = issue_key(
                conn, name="bench", owner="bench", permissions=["*"], rate_limit=HUGE_RATE
            )
            with conn.cursor() as cur:
                cur.execute(BASELINE_TABLE)

    def versions(self) -> dict[str, str]:
        """The Postgres and Redis server versions in use."""
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            pg = str(cur.fetchone()[0])  # type: ignore[index]
            cur.execute("SHOW fsync")
            fsync = str(cur.fetchone()[0])  # type: ignore[index]
            cur.execute("SHOW synchronous_commit")
            sync = str(cur.fetchone()[0])  # type: ignore[index]
        info: dict[str, Any] = self.redis().info("server")  # type: ignore[assignment]
        return {
            "postgres": f"{pg} ({self.postgres_note}; fsync={fsync}, synchronous_commit={sync})",
            "redis": f"{info['redis_version']} (private server)",
        }

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of every child: the service's settings plus gunicorn's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKEXEC_", "GUNICORN_"))}
        settings = Settings(
            database_url=self.database_url,
            redis_url=self.redis_url,
            jwt_secret=self._jwt_secret,
            definition_modules=DIAGNOSTICS,
            ratelimit_enabled=True,
            ratelimit_default=HUGE_RATE,
            ratelimit_bulk=HUGE_RATE,
        )
        env.update(settings.to_env())
        env.update(
            {
                "GUNICORN_WORKERS": str(self.api_workers),
                "GUNICORN_THREADS": str(self.api_threads),
                "FLOWER_UNAUTHENTICATED_API": "true",
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update(extra or {})
        return env

    def connect(self) -> psycopg2.extensions.connection:
        """A plain autocommit connection to the benchmark database."""
        conn = psycopg2.connect(self.database_url)
        conn.autocommit = True
        return conn

    def redis(self) -> redis.Redis:
        """A client for the private Redis."""
        return redis.Redis.from_url(self.redis_url)

    def reset(self) -> None:
        """Empty the task tables and the queues between benchmarks."""
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute("TRUNCATE tasks, task_attempts, task_logs, idempotency_keys, bench_tasks")
        r = self.redis()
        keys = [k for q in (SERVICE_QUEUE, BASELINE_QUEUE) for k in queue_keys(q)]
        r.delete(*keys, "unacked", "unacked_index")
        for key in r.scan_iter("bench:*"):
            r.delete(key)

    # ------------------------------------------------------------ processes

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        """Start `python <args>` in its own session with output to a log file."""
        log_path = self.workdir / f"{name}-{len(self.procs)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env(extra_env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so we can stop it with its children, by group id
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_gunicorn(
        self, name: str, target: str, extra_env: dict[str, str] | None = None
    ) -> tuple[Proc, str]:
        """Serve a WSGI app under the service's gunicorn settings; return it and its URL."""
        port = free_port()
        cmd = ["-m", "gunicorn", "-c", str(ROOT / "config" / "gunicorn.py"), target]
        proc = self.spawn(name, cmd, {**(extra_env or {}), "GUNICORN_BIND": f"127.0.0.1:{port}"})
        url = f"http://127.0.0.1:{port}"
        self._wait(proc, lambda: _http_ok(url + "/healthz"), 60)
        self._wait(proc, lambda: len(gunicorn_workers(proc.pid)) >= self.api_workers, 60)
        for _ in range(self.api_workers * 4):  # make every worker import its app before load
            _http_ok(url + "/healthz")
        return proc, url

    def start_flower(self) -> tuple[Proc, str]:
        """Run Flower on the service's broker, its REST API enabled without auth (loopback)."""
        port = free_port()
        cmd = ["-m", "celery", "-A", "workers.celery_app", "flower"]
        proc = self.spawn("flower", [*cmd, f"--port={port}", "--address=127.0.0.1"])
        url = f"http://127.0.0.1:{port}"
        self._wait(proc, lambda: _http_ok(url + "/healthcheck"), 60)
        return proc, url

    def start_worker(self, name: str, app: str, queue: str, concurrency: int) -> Proc:
        """Start a prefork Celery worker and wait until it consumes."""
        cmd = ["-m", "celery", "-A", app, "worker", "--loglevel", "INFO", "-Q", queue]
        cmd += ["--concurrency", str(concurrency), "-n", f"{name}-{os.getpid()}@%h"]
        cmd += ["--without-mingle", "--without-gossip"]
        proc = self.spawn(name, cmd)
        self._wait(proc, lambda: " ready." in proc.log_text(), 60)
        self._wait(proc, lambda: len(children(proc.pid)) >= concurrency, 30)
        return proc

    def start_sweeper(self) -> Proc:
        """Start the service's sweeper (`python -m cli sweeper`)."""
        return self.spawn("sweeper", ["-m", "cli", "sweeper"])

    def stop(self, proc: Proc, timeout: float = 8.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`."""
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers (pool children) of that group only
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        """Stop every process, the servers, and drop the database."""
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout=5)
        if self._redis is not None:
            self._redis.stop()
        if self._pg is not None:
            self._pg.stop()
        elif self.database_url:
            with contextlib.suppress(psycopg2.Error):
                with contextlib.closing(psycopg2.connect(SHARED_POSTGRES)) as conn:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(f'DROP DATABASE IF EXISTS "{self._db_name}" WITH (FORCE)')

    def _wait(self, proc: Proc, ready: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                if ready():  # type: ignore[operator]
                    return
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{proc.name} not ready in {timeout}s:\n{proc.log_text()[-3000:]}"
                )
            time.sleep(0.1)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of a queue with Celery's ten priority steps (separator ':')."""
    return [queue] + [f"{queue}:{step}" for step in range(1, 10)]


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def gunicorn_workers(master: int) -> list[int]:
    """The worker processes of a gunicorn master."""
    return children(master)


def _reachable(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)
