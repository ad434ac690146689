"""The fleet under partition: one data host, two API hosts, three worker hosts, two sweepers.

Each host is a network namespace of `network.Network` with a host name of its own, so the
ledger's `worker_host` and Celery's node names tell the worker hosts apart. Postgres and Redis
run on the data host, each on an address of its own there, so a host's link to one can be cut
while its link to the other stays. The test drives the API hosts over HTTP, as a load
balancer would, and reads the ledger over the bridge.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import redis as redis_lib
import requests

from cli.processes import api_command, worker_command
from cli.servers import PostgresServer, RedisServer, _service_user
from config.settings import Settings
from shared import schema, store
from tests.helpers import JWT_SECRET, ROOT, settings_env
from tests.partitions.network import Network
from tests.reliability.cluster import DEFINITION_MODULE, SUITE_SETTINGS, children_of
from workers.definitions import load_registry

QUEUE = "standard-executor"
API_PORT = 8000
#: A request that takes longer than this is a hung API, not a slow one.
CLIENT_TIMEOUT = 20.0
API_HOSTS = ("api1", "api2")
WORKER_HOSTS = ("w1", "w2", "w3")
SWEEPER_HOSTS = ("s1", "s2")
#: name -> addresses: the data host's own, then Postgres's, then Redis's.
LAYOUT = {"data": 3, **dict.fromkeys((*API_HOSTS, *WORKER_HOSTS, *SWEEPER_HOSTS), 1)}
WORKER_CONCURRENCY = 2
#: Postgres's own keepalives on its clients' connections, as our clients have on theirs
#: (shared/db.py link_options). A client cut off mid-transaction gives up its connection, but
#: its goodbye is lost in the partition; the server, waiting for the next statement, would keep
#: the session, its transaction and its locks until the kernel's default keepalive (2 hours).
#: Unanswered probes end it a few seconds into the cut; once healed, the host's reset does.
KEEPALIVES = (
    f"tcp_keepalives_idle={SUITE_SETTINGS['db_connect_timeout']}",
    "tcp_keepalives_interval=1",
    "tcp_keepalives_count=3",
)
#: How long the fleet's reset waits for a lock before it names who holds it and fails.
RESET_LOCK_TIMEOUT = 30


class DataPostgres(PostgresServer):
    """A private Postgres in the data host's namespace, listening on its address there."""

    def __init__(self, data_dir: Path, net: Network, address: str) -> None:
        super().__init__(data_dir, port=5432)
        self.net = net
        self.address = address

    def _url_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/{database}"

    def _popen_kwargs(self) -> dict[str, Any]:
        # Root enters the namespace; setpriv then drops to the service user (all exec: one pid).
        return {
            "cwd": self.data_dir,
            "env": {k: v for k, v in os.environ.items() if not k.startswith("PG")},
        }

    def _initdb(self) -> None:
        kwargs = PostgresServer._popen_kwargs(self)  # as the service user, anywhere
        cmd = [str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        cmd += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed in {self.data_dir}:\n{done.stdout}{done.stderr}")
        # The fleet's hosts connect over the bridge, not from loopback.
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.net.subnet} trust\n")

    def _command(self) -> list[str]:
        uid, gid = _service_user()
        cmd = [str(self._bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        cmd += ["-h", self.address, "-k", str(self.data_dir)]
        for setting in ("fsync=on", "synchronous_commit=on", "max_connections=300", *KEEPALIVES):
            cmd += ["-c", setting]
        drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        return self.net.command("data", [*drop, *cmd])


class DataRedis(RedisServer):
    """A private Redis in the data host's namespace, listening on its address there."""

    def __init__(self, data_dir: Path, net: Network, address: str) -> None:
        super().__init__(data_dir, port=6379)
        self.net = net
        self.address = address

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def _command(self) -> list[str]:
        cmd = super()._command()
        cmd[cmd.index("--bind") + 1] = self.address
        # Not loopback, no password: Redis would refuse the fleet's hosts. The network is ours.
        cmd += ["--protected-mode", "no"]
        return self.net.command("data", cmd)

    def _probe(self) -> bool:
        with redis_lib.Redis(self.address, self.port, socket_timeout=0.5) as client:
            return bool(client.ping()) and int(client.info("server")["process_id"]) == self.pid


@dataclass
class Service:
    """One service process on one host."""

    role: str
    host: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    starts: int = 1

    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Fleet:
    """Every host and process of the simulated fleet; `reset` readies it for a scenario."""

    net: Network
    base: Path
    postgres: DataPostgres
    redis: DataRedis
    settings: Settings
    services: list[Service] = field(default_factory=list)
    #: How often each service had started when the current scenario began.
    baseline: dict[tuple[str, str], int] = field(default_factory=dict)

    # ------------------------------------------------------------ building

    @classmethod
    def start(cls, base: Path, worker_hosts: int = len(WORKER_HOSTS)) -> Fleet:
        """Build the network, start the servers and every service; all undone on failure."""
        net = Network.create(LAYOUT)
        data = net.hosts["data"]
        postgres = DataPostgres(base / "postgres", net, data.addresses[1])
        redis = DataRedis(base / "redis", net, data.addresses[2])
        try:
            postgres.start()
            redis.start()
            settings = Settings(
                database_url=postgres.create_database("taskexec"),
                redis_url=redis.url,
                jwt_secret=JWT_SECRET,
                **SUITE_SETTINGS,  # type: ignore[arg-type]
            )
        except BaseException:
            for server in (redis, postgres):
                with contextlib.suppress(Exception):
                    server.kill()
            net.destroy()
            raise
        fleet = cls(net, base, postgres, redis, settings)
        try:
            fleet._start(worker_hosts)
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def _start(self, worker_hosts: int) -> None:
        schema.migrate(self.settings.database_url)
        with contextlib.closing(psycopg2.connect(self.settings.database_url)) as conn, conn:
            store.publish_definitions(conn, load_registry(DEFINITION_MODULE))
        for host in API_HOSTS:
            self._spawn("api", host)
        for host in WORKER_HOSTS[:worker_hosts]:
            self._spawn("worker", host)
        for host in SWEEPER_HOSTS:
            self._spawn("sweeper", host)
        self.wait_ready()

    def _argv(self, role: str, host: str) -> list[str]:
        if role == "api":
            return api_command(API_PORT, workers=1, host=self.net.hosts[host].address)
        if role == "worker":
            node = f"{host}@%h"  # %h: the host's own name, txp-<pid>-<host>
            cmd = worker_command([QUEUE], WORKER_CONCURRENCY, node)
            return [*cmd, "--without-mingle", "--without-gossip"]
        return [sys.executable, "-m", "cli", "sweeper"]

    def _env(self) -> dict[str, str]:
        env = settings_env(self.settings)
        env.update(
            TASKEXEC_DEFINITION_MODULES=DEFINITION_MODULE,
            GUNICORN_WORKERS="1",
            GUNICORN_THREADS="8",
            GUNICORN_ACCESSLOG="/dev/null",
        )
        return env

    def _spawn(self, role: str, host: str) -> Service:
        argv = self._argv(role, host)
        path = self.base / f"{role}-{host}-{len(self.services)}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                self.net.command(host, argv),
                env=self._env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: teardown kills its children too
            )
        service = Service(role, host, argv, proc, path)
        self.services.append(service)
        return service

    def restart(self, service: Service) -> None:
        """Start a service that died again, on the same host (a scenario left it dead)."""
        _kill_group(service.proc)
        fresh = self._spawn(service.role, service.host)
        self.services.remove(fresh)
        service.proc, service.log_path, service.starts = (
            fresh.proc,
            fresh.log_path,
            service.starts + 1,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until every API answers, every worker consumes with its pool, sweepers run."""
        deadline = time.monotonic() + timeout
        pending = list(self.services)
        while pending:
            for service in list(pending):
                if not service.running():
                    raise RuntimeError(
                        f"{service.role} on {service.host} exited:\n{service.log()[-3000:]}"
                    )
                if self._ready(service):
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                late = pending[0]
                raise RuntimeError(f"{late.role} on {late.host} not ready:\n{late.log()[-3000:]}")
            time.sleep(0.2)

    def _ready(self, service: Service) -> bool:
        if service.role == "api":
            with contextlib.suppress(requests.RequestException):
                return requests.get(self.url(service.host) + "/healthz", timeout=2).ok
            return False
        if service.role == "worker":
            children = children_of(service.proc.pid)
            return " ready." in service.log() and len(children) >= WORKER_CONCURRENCY
        return True

    # ------------------------------------------------------------ between scenarios

    def reset(self) -> None:
        """Heal every link, bring back what died, empty the ledger and the broker."""
        self.net.heal_all()
        dead = [s for s in self.services if not s.running()]
        for service in dead:
            self.restart(service)
        if dead:
            self.wait_ready()
        self.baseline = {(s.role, s.host): s.starts for s in self.services}
        with contextlib.closing(connect(self.settings.database_url)) as conn, conn.cursor() as cur:
            # A session left holding a lock would block the TRUNCATE, and every query queued
            # behind it, for good: a hang no test timeout can interrupt (it waits in libpq).
            cur.execute(f"SET lock_timeout = '{RESET_LOCK_TIMEOUT}s'")
            try:
                cur.execute("TRUNCATE tasks, task_attempts, task_logs, idempotency_keys CASCADE")
            except psycopg2.errors.LockNotAvailable:
                raise RuntimeError(
                    f"the ledger stayed locked for {RESET_LOCK_TIMEOUT}s: "
                    + "; ".join(self.lingering(cur, since=time.time()))
                ) from None
        redis_lib.Redis.from_url(self.redis.url).flushall()

    def lingering(self, cur: Any, since: float) -> list[str]:
        """Sessions in a transaction begun before `since` (epoch): host, state, age, query."""
        cur.execute(
            "SELECT host(client_addr), state, extract(epoch FROM now() - xact_start),"
            " left(query, 100) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND xact_start < to_timestamp(%s)"
            " AND pid <> pg_backend_pid()",
            (since,),
        )
        by_address = {a: h.name for h in self.net.hosts.values() for a in h.addresses}
        return [
            f"{by_address.get(address, address)} {state} for {age:.0f}s: {query}"
            for address, state, age, query in cur.fetchall()
        ]

    def stop(self) -> None:
        """Stop every process, then the servers, then remove the network (always)."""
        try:
            for service in self.services:
                if service.running():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(service.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for service in self.services:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    service.proc.wait(max(deadline - time.monotonic(), 0.1))
            for service in self.services:
                _kill_group(service.proc)
            for server in (self.redis, self.postgres):
                with contextlib.suppress(Exception):
                    server.kill()
        finally:
            self.net.destroy()

    # ------------------------------------------------------------ looking at it

    def address_of(self, server: str) -> str:
        """The data host's address of one server: "postgres" or "redis"."""
        return {"postgres": self.postgres.address, "redis": self.redis.address}[server]

    def url(self, host: str) -> str:
        return f"http://{self.net.hosts[host].address}:{API_PORT}"

    def hostname(self, host: str) -> str:
        """The host name a host's processes see (and the ledger records as worker_host)."""
        return self.net.hosts[host].hostname

    def troubled(self) -> list[str]:
        """Services that died or were restarted since the scenario began."""
        return [
            f"{s.role}@{s.host}"
            for s in self.services
            if not s.running() or s.starts != self.baseline.get((s.role, s.host))
        ]

    def of(self, role: str) -> list[Service]:
        return [s for s in self.services if s.role == role]

    def service(self, role: str, host: str) -> Service:
        return next(s for s in self.services if s.role == role and s.host == host)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def connect(database_url: str, timeout: float = 30) -> psycopg2.extensions.connection:
    """The test's own autocommit connection to the ledger (over the bridge: never cut)."""
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


# ---------------------------------------------------------------- the API over HTTP


class HttpResponse:
    """The part of a Flask test response the fault suite's ledger reads."""

    def __init__(self, response: requests.Response) -> None:
        self.status_code = response.status_code
        self._response = response

    def get_json(self) -> Any:
        return self._response.json()

    def get_data(self, as_text: bool = False) -> Any:
        return self._response.text if as_text else self._response.content


class HttpApi:
    """Stands in for the Flask app of the fault suite's ledger: real HTTP to the API hosts.

    Requests go round-robin over the API hosts, as behind a load balancer; each answer is
    counted per host and status, with its latency, so a verdict can say what a cut host
    answered during the partition.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._next = itertools.cycle(API_HOSTS)
        self._lock = threading.Lock()
        #: (monotonic time the request was sent, host, kind, status (-1: none), seconds taken)
        self.log: list[tuple[float, str, str, int, float]] = []

    def test_client(self) -> HttpClient:
        return HttpClient(self)

    def pick(self) -> str:
        with self._lock:
            return next(self._next)

    def record(self, host: str, method: str, path: str, status: int, sent: float) -> None:
        kind = "other"
        if method == "POST" and path.rstrip("/") in ("/api/v1/tasks", "/api/v1/tasks/bulk"):
            kind = "submit"
        elif method == "POST" and path.endswith("/cancel"):
            kind = "cancel"
        with self._lock:
            self.log.append((sent, host, kind, status, time.monotonic() - sent))


class HttpClient:
    """One thread's HTTP session to the fleet's API hosts."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api
        self.session = requests.Session()

    def request(self, method: str, path: str, host: str | None = None, **kw: Any) -> HttpResponse:
        host = host or self.api.pick()
        started = time.monotonic()
        try:
            response = self.session.request(
                method, self.api.fleet.url(host) + path, timeout=CLIENT_TIMEOUT, **kw
            )
        except requests.RequestException:
            self.api.record(host, method, path, -1, started)
            raise
        self.api.record(host, method, path, response.status_code, started)
        return HttpResponse(response)

    def post(
        self, path: str, json: Any = None, headers: dict[str, str] | None = None
    ) -> HttpResponse:
        return self.request("POST", path, json=json, headers=headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> HttpResponse:
        return self.request("GET", path, headers=headers)
