"""The `taskexec` command's wiring: registration, the sweeper's old name, dev's bind, signals."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click
import pytest

from cli.main import main as taskexec
from cli.processes import api_command
from cli.supervisor import STOP_SIGNALS, Stop, StopSignals
from tests.helpers import ROOT


def test_every_command_is_registered_and_beat_is_a_hidden_alias_of_sweeper() -> None:
    commands = taskexec.commands
    for name in ("dev", "api", "worker", "sweeper", "flower", "migrate", "keys", "token"):
        assert name in commands, name
    for name in ("submit", "get", "cancel", "delete", "list", "definitions"):
        assert name in commands, name
    assert commands["beat"].hidden and not commands["sweeper"].hidden
    assert commands["beat"].callback is commands["sweeper"].callback
    listed = taskexec.get_help(click.Context(taskexec))
    assert "sweeper" in listed and " beat " not in listed


def test_dev_binds_the_api_to_loopback_unless_told_otherwise() -> None:
    (host,) = [p for p in taskexec.commands["dev"].params if p.name == "host"]
    assert host.default == "127.0.0.1"
    cmd = api_command(8000, host="127.0.0.1")
    assert cmd[cmd.index("--bind") + 1] == "127.0.0.1:8000"
    # `taskexec api` (the Procfile's and compose's way) still serves every interface.
    cmd = api_command(8000)
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0:8000"


@pytest.fixture
def stop_signals() -> Iterator[StopSignals]:
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    signals = StopSignals()
    signals.install()
    yield signals
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_raises_once_like_ctrl_c(stop_signals: StopSignals, signum: int) -> None:
    with pytest.raises(KeyboardInterrupt) as caught:
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the handler runs at the next bytecode boundary
    assert isinstance(caught.value, Stop)
    assert caught.value.signal_name == signal.Signals(signum).name
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal must not cut the stop short
    time.sleep(0.05)


def test_a_stop_signal_waits_for_the_end_of_a_held_block(stop_signals: StopSignals) -> None:
    reached = False
    with pytest.raises(Stop), stop_signals.held():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        reached = True
    assert reached


class _RunningTask(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = json.dumps({"id": "t1", "taskDefinitionId": "sleep", "status": "RUNNING"})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_get_watch_stops_on_ctrl_c_even_when_started_with_sigint_ignored() -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored (`trap "" INT`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RunningTask)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    command = [sys.executable, "-m", "cli", "get", "--watch", "t1", "--url", url]
    proc = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec ' + shlex.join(command)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "RUNNING" in proc.stdout.readline()  # it is watching
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        assert "the task was not cancelled" in proc.communicate()[1]
    finally:
        proc.kill()
        proc.wait()
        server.shutdown()
        server.server_close()
