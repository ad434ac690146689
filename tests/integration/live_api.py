"""A real gunicorn serving the API on a free port, for tests that talk HTTP to a live server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

from cli.servers import free_port
from config.settings import Settings
from tests.helpers import ROOT, settings_env, wait_for


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def gunicorn(
    settings: Settings, log_dir: Path, workers: int = 2, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """Run `gunicorn api.wsgi:app` with `settings`; yield its base URL, stop it afterwards.

    It is ready once every worker has booted and the API answers.
    """
    port = free_port()
    log_path = log_dir / "gunicorn.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "api.wsgi:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            "2",
            "--worker-class",  # the worker config/gunicorn.py ships
            "config.gunicorn_worker.BufferedThreadWorker",
            "--timeout",
            "60",
            *extra_args,
        ],
        env=settings_env(settings),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        booted = log_path.read_text(errors="replace").count("Booting worker")
        return booted >= workers and _healthy(url)

    try:
        wait_for(ready, timeout=60, interval=0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
