"""Commands that become one long-running process each: api, worker, sweeper, deliverer, flower."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import click

from cli.base import load_settings

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def api_command(port: int, workers: int | None = None, host: str = "0.0.0.0") -> list[str]:
    """The gunicorn command line for the API, on all interfaces unless `host` says otherwise."""
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(CONFIG_DIR / "gunicorn.py"),
        "--bind",
        f"{host}:{port}",
    ]
    if workers:
        cmd += ["--workers", str(workers)]
    return [*cmd, "api.wsgi:app"]


def worker_command(executors: list[str], concurrency: int | None, name: str | None) -> list[str]:
    """The Celery worker command line consuming the given executor queues."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--loglevel",
        "INFO",
        "-Q",
        ",".join(executors),
    ]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    cmd += ["-n", name or f"{executors[0]}-{os.getpid()}@%h"]
    return cmd


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def flower_command(port: int, basic_auth: str | None, address: str | None = None) -> list[str]:
    """The Flower command line, on the workers' broker; see `flower_env` for its credentials.

    Without credentials it binds to loopback only: Flower is never reachable unauthenticated.
    """
    address = address or ("0.0.0.0" if basic_auth else "127.0.0.1")
    if not basic_auth and address not in LOOPBACK:
        raise ValueError(f"Flower on {address} needs basic auth (TASKEXEC_FLOWER_BASIC_AUTH)")
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        f"--port={port}",
        f"--address={address}",
        f"--conf={CONFIG_DIR / 'flower.py'}",
    ]


def flower_env(basic_auth: str | None) -> dict[str, str]:
    """Flower's credentials as its own variable (kept out of the process list), API closed."""
    env = {"FLOWER_UNAUTHENTICATED_API": "false"}
    if basic_auth:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    return env


def check_basic_auth(value: str) -> str:
    """Check `user:password[,user:password...]`; passwords of at least 8 characters."""
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not user or not sep or len(password) < 8:
            raise ValueError("expected user:password (password of 8 or more characters)")
    return value


def default_executors(definition_modules: str = "") -> list[str]:
    """Every executor queue of the worker's definitions (manual ones never reach a worker)."""
    from workers.definitions import load_registry

    return sorted({d.executor for d in load_registry(definition_modules) if d.handler is not None})


@click.command()
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", type=int, default=None, help="gunicorn worker processes.")
def api(port: int, workers: int | None) -> None:
    """Serve the HTTP API with gunicorn."""
    load_settings()  # fail early, naming every bad variable
    cmd = api_command(port, workers)
    os.execv(cmd[0], cmd)


@click.command()
@click.option("--executor", "executors", multiple=True, help="Queue(s) to consume; default: all.")
@click.option("--concurrency", type=int, default=None, help="Child processes (default: cores).")
@click.option("--name", default=None, help="Worker node name (default: executor-pid@host).")
def worker(executors: tuple[str, ...], concurrency: int | None, name: str | None) -> None:
    """Run a Celery worker for one or more executor pools."""
    settings = load_settings()
    cmd = worker_command(
        list(executors) or default_executors(settings.definition_modules),
        concurrency or settings.worker_concurrency or None,
        name,
    )
    os.execv(cmd[0], cmd)


@click.command()
def sweeper() -> None:
    """Run the sweeper: republish lost messages, rescue dead attempts, enforce deadlines."""
    from config.logging import configure_logging
    from workers.metrics import counting_sweeper

    settings = load_settings()
    configure_logging(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # It counts its lease rescues (served on TASKEXEC_METRICS_PORT, or into dev's directory).
    sweeper, private_directory = counting_sweeper(settings)
    try:
        sweeper.run_forever(stop)
    except KeyboardInterrupt:
        pass
    finally:
        if private_directory:
            shutil.rmtree(private_directory, ignore_errors=True)


@click.command()
def deliverer() -> None:
    """Run the webhook deliverer: send signed task events to subscriptions, with retries."""
    from config.logging import configure_logging
    from workers import deliverer_metrics
    from workers.deliverer import Deliverer

    settings = load_settings()
    configure_logging(settings)
    if settings.webhook_nice:
        # Deliveries yield the CPU to task workers on a shared host: a busy deliverer (a
        # millisecond of CPU per delivery, its Postgres's included) would otherwise slow tasks.
        os.nice(settings.webhook_nice)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # It counts its attempts (served on TASKEXEC_METRICS_PORT, or into dev's directory).
    private_directory = deliverer_metrics.install(settings)
    try:
        Deliverer(settings).run_forever(stop)
    except KeyboardInterrupt:
        pass
    finally:
        deliverer_metrics.remove(private_directory)


# The sweeper's first name, kept so that existing Procfiles and compose files still start it.
beat = click.Command(
    "beat", callback=sweeper.callback, hidden=True, help="Old name of `taskexec sweeper`."
)


@click.command()
@click.option("--port", default=5555, show_default=True)
@click.option(
    "--address",
    default=None,
    help="Bind address (default: 0.0.0.0 with basic auth, else 127.0.0.1).",
)
@click.option(
    "--basic-auth",
    default=None,
    help="user:password; default TASKEXEC_FLOWER_BASIC_AUTH. Required off loopback.",
)
def flower(port: int, address: str | None, basic_auth: str | None) -> None:
    """Run Flower against the broker (authenticated whenever reachable from outside)."""
    settings = load_settings()
    credentials = basic_auth or settings.flower_basic_auth or None
    try:
        if credentials:
            check_basic_auth(credentials)
        cmd = flower_command(port, credentials, address)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    os.execve(cmd[0], cmd, {**os.environ, **flower_env(credentials)})
