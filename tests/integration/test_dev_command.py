"""`taskexec dev` with nothing configured: embedded servers, a task end to end, each way to stop."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli.servers import free_port
from tests.helpers import ROOT, SEED_ORDER

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _http(
    method: str, url: str, key: str | None = None, body: dict | None = None
) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the session id (field 6) of every child we started is its own; match on the parent chain
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    for child in list(found):
        found |= _descendants(child)
    return found


def _alive(pids: set[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
                alive.append(pid)
        except OSError:
            pass
    return alive


def _listen_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port` (from /proc/net/tcp, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


class Dev:
    """A `taskexec dev` process with nothing configured, its log, and its port."""

    def __init__(self, data_dir: Path, log_path: Path, ignore_sigint: bool = False) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("TASKEXEC_")
        }
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "cli", "dev", "--port", str(self.port)]
        command += ["--data-dir", str(data_dir), "--concurrency", "1"]
        if ignore_sigint:  # as a background job (`cmd &`) of a non-interactive shell starts
            command = ["sh", "-c", 'trap "" INT; exec ' + shlex.join(command)]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.base = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> str:
        """Wait for the key, the API and the worker; return the key."""
        deadline = time.monotonic() + timeout
        key = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-3000:]
            match = re.search(r"every permission: (tes_\S+)", self.log())
            key = key or (match.group(1) if match else None)
            if key and " ready." in self.log() and self._api_ready():
                return key
            time.sleep(0.3)
        raise AssertionError("dev never got ready:\n" + self.log()[-3000:])

    def _api_ready(self) -> bool:
        try:
            return _http("GET", self.base + "/readyz")[0] == 200
        except OSError:
            return False

    def stop(self, signum: int, to_group: bool = False) -> list[int]:
        """Send `signum`; return the processes of dev still running afterwards."""
        children = _descendants(self.proc.pid)
        assert len(children) >= 6, children  # postgres, redis, api, worker, sweeper, children
        if to_group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)
        try:
            self.proc.wait(60)
        finally:
            time.sleep(0.5)
            left = _alive(children)
            for pid in left:  # never leak them into the rest of the suite
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return left

    def kill(self) -> None:
        """SIGKILL dev and everything it started (a failed test's cleanup)."""
        for pid in [*_alive(_descendants(self.proc.pid)), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded PostgreSQL cluster for the module: initdb once."""
    return tmp_path_factory.mktemp("dev-data")


@pytest.fixture
def start_dev(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    """Start `taskexec dev` processes; kill whatever a failed test left running."""
    started: list[Dev] = []

    def start(ignore_sigint: bool = False) -> Dev:
        started.append(Dev(data_dir, tmp_path / f"dev-{len(started)}.log", ignore_sigint))
        return started[-1]

    yield start
    for dev in started:
        if dev.proc.poll() is None:
            dev.kill()


@pytest.fixture
def dev(start_dev: Callable[..., Dev]) -> Dev:
    return start_dev()


def test_dev_runs_everything_embedded_on_loopback_and_stops_on_ctrl_c(dev: Dev) -> None:
    key = dev.wait_ready()
    status, body = _http("POST", dev.base + "/api/v1/tasks", key, SEED_ORDER)
    assert status == 201, body
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, task = _http("GET", f"{dev.base}/api/v1/tasks/{body['id']}", key)
        if task.get("status") in ("COMPLETED", "FAILED"):
            break
        time.sleep(0.3)
    assert task["status"] == "COMPLETED", task
    assert task["output"] == {"subtotal": 46.97, "tax": 3.76, "total": 50.73}
    text = dev.log()
    assert "    api | " in text and " worker | " in text and "sweeper | " in text
    # The printed key has every permission: the API must not be reachable from the network.
    assert _listen_addresses(dev.port) == {"127.0.0.1"}
    left = dev.stop(signal.SIGINT, to_group=True)  # what Ctrl-C in a terminal sends
    assert not left, f"processes left running after Ctrl-C: {left}"
    assert dev.proc.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_dev_stops_everything_on_sigterm_and_sighup(dev: Dev, signum: int) -> None:
    dev.wait_ready()
    left = dev.stop(signum)
    assert not left, f"processes left running after {signal.Signals(signum).name}: {left}"
    assert "stopping" in dev.log()


def test_dev_stops_on_ctrl_c_even_when_started_with_sigint_ignored(
    start_dev: Callable[..., Dev],
) -> None:
    started = start_dev(ignore_sigint=True)
    started.wait_ready()
    left = started.stop(signal.SIGINT)
    assert not left, f"processes left running after SIGINT: {left}"
