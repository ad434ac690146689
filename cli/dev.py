"""`taskexec dev`: the whole service in one command, with embedded servers when none is set."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import click

from cli.processes import (
    api_command,
    default_executors,
    flower_command,
    flower_env,
    worker_command,
)

COLOURS = {"api": 36, "worker": 33, "beat": 35, "flower": 32, "redis": 31, "postgres": 34}


def _pump(name: str, stream: IO[bytes], lock: threading.Lock) -> None:
    colour = COLOURS.get(name, 37) if sys.stdout.isatty() else None
    label = f"\x1b[{colour}m{name:>6} |\x1b[0m " if colour else f"{name:>6} | "
    for raw in iter(stream.readline, b""):
        with lock:
            sys.stdout.write(label + raw.decode(errors="replace"))
            sys.stdout.flush()


class Supervisor:
    """Starts child processes with prefixed output and stops them all together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._lock = threading.Lock()

    def start(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(
            cmd,
            env={**self.env, **(extra_env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        threading.Thread(target=_pump, args=(name, proc.stdout, self._lock), daemon=True).start()
        self.children.append((name, proc))

    def wait(self) -> str | None:
        """Block until a child exits (returns its name) or we are interrupted (None)."""
        while True:
            for name, proc in self.children:
                if proc.poll() is not None:
                    return name
            time.sleep(0.3)

    def stop(self, timeout: float = 15) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in self.children:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@click.command()
@click.option("--port", default=8000, show_default=True, help="The API's port.")
@click.option(
    "--data-dir",
    default=".data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where embedded servers keep their data.",
)
@click.option("--concurrency", default=2, show_default=True, help="Worker child processes.")
@click.option("--flower/--no-flower", default=False, help="Also run Flower on port 5555.")
def dev(port: int, data_dir: str, concurrency: int, flower: bool) -> None:
    """Run migrations, the API, a worker, the sweeper (and Flower) in the foreground.

    DATABASE_URL and REDIS_URL are used when set; otherwise embedded PostgreSQL and Redis
    servers are started under --data-dir. Ctrl-C stops everything.
    """
    from cli.servers import PostgresServer, RedisServer
    from config.settings import ConfigurationError, Settings
    from shared import db, schema, store
    from shared.credentials import generate_key

    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    servers: list[RedisServer | PostgresServer] = []
    try:
        if not env.get("DATABASE_URL"):
            click.echo(f"starting an embedded PostgreSQL in {data / 'postgres'}")
            pg = PostgresServer(data / "postgres").start()
            servers.append(pg)
            env["DATABASE_URL"] = pg.create_database("taskexec")
        if not env.get("REDIS_URL"):
            click.echo(f"starting an embedded Redis in {data / 'redis'}")
            redis = RedisServer(data / "redis").start()
            servers.append(redis)
            env["REDIS_URL"] = redis.url
        if not env.get("TASKEXEC_JWT_SECRET"):
            secret_file = data / "jwt-secret"
            if not secret_file.exists():
                secret_file.write_text(secrets.token_urlsafe(48))
                secret_file.chmod(0o600)
            env["TASKEXEC_JWT_SECRET"] = secret_file.read_text().strip()
        try:
            settings = Settings.from_env(env)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from exc
        applied = schema.migrate(settings.database_url)
        click.echo(f"migrations: {len(applied)} applied")
        new = generate_key()
        conn = db.connect(settings.database_url)
        with conn:
            store.insert_api_key(
                conn,
                key_id=new.key_id,
                name="dev",
                owner="dev",
                permissions=["*"],
                key_hash=new.key_hash,
                rate_limit="10000/minute",
            )
        conn.close()

        supervisor = Supervisor(env)
        supervisor.start("api", api_command(port, workers=2))
        worker_cmd = worker_command(
            default_executors(settings.definition_modules), concurrency, "dev@%h"
        )
        supervisor.start("worker", worker_cmd)
        supervisor.start("beat", [sys.executable, "-m", "cli", "beat"])
        flower_auth = None
        if flower:
            flower_auth = settings.flower_basic_auth or _dev_flower_auth(data)
            supervisor.start(
                "flower", flower_command(5555, flower_auth, "127.0.0.1"), flower_env(flower_auth)
            )
        _banner(port, env, new.secret, flower_auth)
        try:
            exited = supervisor.wait()
            click.echo(f"{exited} exited; stopping everything", err=True)
        except KeyboardInterrupt:
            click.echo("\nstopping…", err=True)
        supervisor.stop()
    finally:
        for server in reversed(servers):
            server.stop()


def _dev_flower_auth(data: Path) -> str:
    """Flower's dev credentials, made once and kept beside the JWT secret."""
    path = data / "flower-auth"
    if not path.exists():
        path.write_text(f"dev:{secrets.token_urlsafe(12)}")
        path.chmod(0o600)
    return path.read_text().strip()


def _banner(port: int, env: dict[str, str], key: str, flower_auth: str | None) -> None:
    lines = [
        "",
        f"taskexec is starting at http://127.0.0.1:{port}  (API docs: /api/v1/docs)",
        f"  DATABASE_URL={env['DATABASE_URL']}",
        f"  REDIS_URL={env['REDIS_URL']}",
        f"  a development API key with every permission: {key}",
        "  more keys: DATABASE_URL=... taskexec keys create --name NAME"
        " --permissions tasks:execute,tasks:read",
    ]
    if flower_auth:
        user, _, password = flower_auth.partition(":")
        lines.append(f"  Flower: http://127.0.0.1:5555  (user {user}, password {password})")
    click.echo("\n".join(lines) + "\n")
