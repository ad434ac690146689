"""`taskexec deliverer` lowers its CPU priority (TASKEXEC_WEBHOOK_NICE): task workers come first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.servers import free_port
from tests.helpers import ROOT

pytestmark = [pytest.mark.integration]


def _niceness(pid: int) -> int:
    # /proc/<pid>/stat: the command may hold spaces, so count fields after its closing ')'.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of the whole line


def _deliverer_niceness(extra: dict[str, str]) -> int:
    env = {
        **os.environ,
        # Nothing listens there: the deliverer starts, logs that it cannot reach Postgres
        # and keeps trying, which is all this test needs of it.
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "deliverer"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # The niceness is set before the loop starts, which it logs (logs go to stderr).
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line.decode(errors="replace"))
            if "deliverer running" in lines[-1]:
                break
        else:
            raise AssertionError("the deliverer exited: " + "".join(lines))
        return _niceness(proc.pid) - os.nice(0)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_the_deliverer_yields_the_cpu_by_default() -> None:
    assert _deliverer_niceness({}) == min(10, 19 - os.nice(0))


def test_its_niceness_is_a_setting_and_zero_keeps_it() -> None:
    assert _deliverer_niceness({"TASKEXEC_WEBHOOK_NICE": "3"}) == min(3, 19 - os.nice(0))
    assert _deliverer_niceness({"TASKEXEC_WEBHOOK_NICE": "0"}) == 0
