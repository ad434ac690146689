"""Run the tests that depend on their surroundings where there are none: a network namespace.

`make test` promises to work on a machine where no PostgreSQL or Redis runs; this proves it.
The namespace has only its own loopback, and the Unix socket directories of services are hidden,
so the tests must start every server they need. Usage: `python tests/isolated.py [pytest args]`
(as root; elsewhere it says why it skips and exits 0).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: One test of each way the suite finds or starts what it needs: the fixtures' private servers,
#: the embedded servers of `taskexec dev`, worker and sweeper processes, a live gunicorn, the
#: CLI. The whole of tests/integration here took 8 minutes and proved nothing more.
SELECTION = [
    "tests/integration/test_servers.py",
    "tests/integration/test_private_postgres.py",
    "tests/integration/test_dev_command.py",
    "tests/integration/test_attempt_watcher.py",
    "tests/integration/test_smoke.py",
    "tests/integration/test_migrations.py",
    "tests/integration/test_delivery.py",
    "tests/integration/test_outbox.py",
    "tests/integration/test_cli_client.py",
    "tests/api/test_smoke.py",
    "tests/api/test_health.py",
]
#: Where local services keep their Unix sockets, which a network namespace does not hide.
SOCKET_DIRS = ["/run/postgresql", "/var/run/postgresql", "/run/redis", "/var/run/redis"]
#: What must not answer inside: the machine's PostgreSQL and Redis.
SERVICE_PORTS = [5432, 6379]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def _unavailable() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if sys.platform != "linux":
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "`ip netns` needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def outside(pytest_args: list[str]) -> int:
    """Make the namespace, run `inside` there, and always delete it."""
    reason = _unavailable()
    if reason:
        print(f"isolated run skipped: {reason}", flush=True)
        return 0
    name = f"taskexec-test-{os.getpid()}"
    made = _run("ip", "netns", "add", name)
    if made.returncode != 0:
        print(f"isolated run skipped: `ip netns add` failed: {made.stderr.strip()}", flush=True)
        return 0
    # make's SIGTERM, like Ctrl-C, must still delete the namespace.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    basetemp = tempfile.mkdtemp(prefix="taskexec-isolated-")
    try:
        up = _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        if up.returncode != 0:
            print(f"isolated run failed: loopback did not come up: {up.stderr}", flush=True)
            return 1
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.pop("TASKEXEC_TEST_PRIVATE_POSTGRES", None)  # find out, as a fresh machine would
        print(f"isolated run in network namespace {name}: {' '.join(SELECTION)}", flush=True)
        # A temporary directory of its own: pytest prunes all but the latest three under
        # /tmp/pytest-of-<user>, which would delete a server's data under a concurrent run.
        cmd = ["ip", "netns", "exec", name, sys.executable, __file__, "--inside"]
        cmd += [f"--basetemp={basetemp}", *pytest_args]
        return subprocess.call(cmd, cwd=ROOT, env=env)
    finally:
        _run("ip", "netns", "delete", name)
        shutil.rmtree(basetemp, ignore_errors=True)
        print(f"isolated run took {time.monotonic() - started:.0f} s", flush=True)


def inside(pytest_args: list[str]) -> int:
    """In the namespace (its own mount namespace too): hide local sockets, check, run pytest."""
    for directory in sorted({str(Path(d).resolve()) for d in SOCKET_DIRS if Path(d).is_dir()}):
        subprocess.run(["mount", "-t", "tmpfs", "none", directory], check=True)
    for port in SERVICE_PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                print(f"isolated run failed: something answers on port {port}", flush=True)
                return 1
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *SELECTION, *pytest_args])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        sys.exit(inside(sys.argv[2:]))
    sys.exit(outside(sys.argv[1:]))
