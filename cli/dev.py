"""`taskexec dev`: the whole service in one command, with embedded servers when none is set."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path

import click

from cli.base import ledger
from cli.processes import (
    api_command,
    default_executors,
    flower_command,
    flower_env,
    worker_command,
)
from cli.supervisor import Stop, StopSignals, Supervisor
from config import multiproc
from config.settings import ConfigurationError, Settings

LOOPBACK = "127.0.0.1"


@click.command()
@click.option(
    "--host",
    default=LOOPBACK,
    show_default=True,
    help="The API's bind address; 0.0.0.0 exposes it (and the printed key) to the network.",
)
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
def dev(host: str, port: int, data_dir: str, concurrency: int, flower: bool) -> None:
    """Run migrations, the API, a worker, the sweeper, the deliverer (and Flower) in the foreground.

    DATABASE_URL and REDIS_URL are used when set; otherwise embedded PostgreSQL and Redis
    servers are started under --data-dir. Ctrl-C, SIGTERM or SIGHUP stops everything.
    """
    from shared import schema

    signals = StopSignals()
    signals.install()  # also undoes an inherited "ignore SIGINT" (a shell's background job)
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    # Unwinds last-in first-out: the children stop before the servers they use.
    with contextlib.ExitStack() as running:
        try:
            env = _backends(dict(os.environ), data, running)
            # One directory for every process's metrics, so the API's /metrics shows the
            # whole service, its two gunicorn workers summed (config/multiproc.py).
            env["PROMETHEUS_MULTIPROC_DIR"] = multiproc.share(data / "metrics")
            settings = _settings(env, data)
            applied = schema.migrate(settings.database_url)
            click.echo(f"migrations: {len(applied)} applied")
            key = _dev_key(settings)
            supervisor = Supervisor(env, signals)
            running.callback(supervisor.stop)
            flower_auth = _start(supervisor, settings, host, port, concurrency, flower, data)
            _banner(host, port, env, key, flower_auth)
            _say(f"{supervisor.wait()} exited; stopping everything")
        except Stop as stop:
            _say(f"\n{stop.signal_name}: stopping…")
        finally:
            signals.ignore()  # the stop below is bounded by timeouts: let it finish


def _backends(env: dict[str, str], data: Path, running: contextlib.ExitStack) -> dict[str, str]:
    """Start an embedded PostgreSQL and Redis for each URL not set; return the environment."""
    from cli.servers import PostgresServer, RedisServer

    if not env.get("DATABASE_URL"):
        click.echo(f"starting an embedded PostgreSQL in {data / 'postgres'}")
        pg = running.enter_context(PostgresServer(data / "postgres"))
        env["DATABASE_URL"] = pg.create_database("taskexec")
    if not env.get("REDIS_URL"):
        click.echo(f"starting an embedded Redis in {data / 'redis'}")
        redis = running.enter_context(RedisServer(data / "redis"))
        env["REDIS_URL"] = redis.url
    return env


def _settings(env: dict[str, str], data: Path) -> Settings:
    """Settings from `env`, with a JWT secret kept under the data directory unless one is set."""
    if not env.get("TASKEXEC_JWT_SECRET"):
        env["TASKEXEC_JWT_SECRET"] = _secret_file(data / "jwt-secret", secrets.token_urlsafe(48))
    from workers.definitions import with_diagnostics  # late, as in cli/processes.py

    # The diagnostic built-ins (echo, sleep, ...) are for trying the service: on here, opt-in
    # in production.
    env["TASKEXEC_DEFINITION_MODULES"] = with_diagnostics(
        env.get("TASKEXEC_DEFINITION_MODULES", "")
    )
    try:
        return Settings.from_env(env)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


def _dev_key(settings: Settings) -> str:
    """A fresh API key with every permission, for the banner."""
    from shared.credentials import issue_key

    with ledger(settings.database_url) as conn:
        _, secret = issue_key(
            conn, name="dev", owner="dev", permissions=["*"], rate_limit="10000/minute"
        )
    return secret


def _start(
    supervisor: Supervisor,
    settings: Settings,
    host: str,
    port: int,
    concurrency: int,
    flower: bool,
    data: Path,
) -> str | None:
    """Start the API, a worker, the sweeper, the deliverer, maybe Flower; return Flower's auth."""
    supervisor.start("api", api_command(port, workers=2, host=host))
    executors = default_executors(settings.definition_modules)
    supervisor.start("worker", worker_command(executors, concurrency, "dev@%h"))
    supervisor.start("sweeper", [sys.executable, "-m", "cli", "sweeper"])
    # Webhooks: receivers on this machine are refused unless TASKEXEC_WEBHOOK_ALLOW_PRIVATE
    # is set, as in production (the variable reaches it through the environment).
    supervisor.start("deliverer", [sys.executable, "-m", "cli", "deliverer"])
    if not flower:
        return None
    auth = settings.flower_basic_auth or _secret_file(
        data / "flower-auth", f"dev:{secrets.token_urlsafe(12)}"
    )
    supervisor.start("flower", flower_command(5555, auth, LOOPBACK), flower_env(auth))
    return auth


def _secret_file(path: Path, new: str) -> str:
    """A secret made once and kept (mode 600) in `path`, so restarts reuse it."""
    if not path.exists():
        path.write_text(new)
        path.chmod(0o600)
    return path.read_text().strip()


def _say(message: str) -> None:
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        click.echo(message, err=True)


def _banner(host: str, port: int, env: dict[str, str], key: str, flower_auth: str | None) -> None:
    shown = LOOPBACK if host in ("0.0.0.0", "::") else host
    lines = [
        "",
        f"taskexec is starting at http://{shown}:{port}  (API docs: /api/v1/docs)",
        f"  DATABASE_URL={env['DATABASE_URL']}",
        f"  REDIS_URL={env['REDIS_URL']}",
        f"  a development API key with every permission: {key}",
        "  more keys: DATABASE_URL=... taskexec keys create --name NAME"
        " --permissions tasks:execute,tasks:read",
    ]
    if shown != host:
        lines.insert(
            2, f"  listening on every interface ({host}): anyone on the network can call it"
        )
    if flower_auth:
        user, _, password = flower_auth.partition(":")
        lines.append(f"  Flower: http://{LOOPBACK}:5555  (user {user}, password {password})")
    click.echo("\n".join(lines) + "\n")
