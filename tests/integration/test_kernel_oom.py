"""The kernel's OOM killer, for real: a worker in a memory cgroup of its own, a handler past it.

Not the per-task memory limit (RLIMIT_DATA, tests/integration/test_memory.py): here nothing in
the worker stops the allocation; the kernel kills the child, and the worker's parent must tell
that from any other SIGKILL by the cgroup's oom_kill counter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.processes import worker_command
from shared.status import TERMINAL
from tests.helpers import ROOT, get, settings_env, submit, wait_for, wait_for_status
from tests.integration.hog_definitions import MODULE

pytestmark = pytest.mark.integration

ROOT_CGROUP = Path("/sys/fs/cgroup")
HEADROOM = 96 * 1024 * 1024


class MemoryCgroup:
    """A memory cgroup made for one test (v2 where it has the memory controller, else v1)."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @classmethod
    def make(cls) -> MemoryCgroup:
        name = f"taskexec-oom-{uuid.uuid4().hex[:8]}"
        if (ROOT_CGROUP / "cgroup.controllers").is_file():
            enabled = (ROOT_CGROUP / "cgroup.subtree_control").read_text().split()
            if "memory" not in enabled:
                pytest.skip("cgroup v2 without the memory controller enabled for child cgroups")
            path, version = ROOT_CGROUP / name, 2
        else:
            own = next(
                (
                    line.split(":", 2)[2]
                    for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if "memory" in line.split(":", 2)[1].split(",")
                ),
                None,
            )
            if own is None or not (ROOT_CGROUP / "memory").is_dir():
                pytest.skip("neither cgroup v2 nor a cgroup v1 memory hierarchy is mounted")
            path, version = ROOT_CGROUP / "memory" / own.lstrip("/") / name, 1
        try:
            path.mkdir()
        except OSError as exc:
            pytest.skip(f"cannot make a memory cgroup at {path}: {exc}")
        return cls(path, version)

    def enter(self) -> None:
        """Move the calling process into the cgroup (a preexec_fn: the worker starts inside)."""
        (self.path / "cgroup.procs").write_text("0")

    def limit(self, headroom: int) -> None:
        """Cap the cgroup at what it uses now plus `headroom` bytes, with no swap to escape to."""
        if self.version == 2:
            used = int((self.path / "memory.current").read_text())
            (self.path / "memory.max").write_text(str(used + headroom))
            swap = self.path / "memory.swap.max"
        else:
            used = int((self.path / "memory.usage_in_bytes").read_text())
            (self.path / "memory.limit_in_bytes").write_text(str(used + headroom))
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():  # memory + swap: the same figure leaves no swap
                swap.write_text(str(used + headroom))
            return
        if swap.exists():
            swap.write_text("0")

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        for pid in self.pids():  # only the worker this test started can be in it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture
def cgroup(processes) -> Iterator[MemoryCgroup]:
    if os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    group = MemoryCgroup.make()
    try:
        yield group
    finally:
        processes.stop_all()
        group.remove()


def pid_of(task: dict) -> int:
    return int(task["executionMetadata"]["executionEnvironment"].rsplit(":", 1)[1])


def test_a_child_killed_by_the_kernels_oom_killer_is_out_of_memory(
    client, auth, processes, cgroup, tmp_path
):
    env = settings_env(processes.settings)
    env["TASKEXEC_DEFINITION_MODULES"] = MODULE
    cmd = [
        *worker_command(["standard-executor"], 1, f"oom-{uuid.uuid4().hex[:6]}@%h"),
        "--without-mingle",
        "--without-gossip",
    ]
    with open(tmp_path / "worker-in-cgroup.log", "wb") as log:
        worker = subprocess.Popen(  # noqa: S603 - our own command line
            cmd,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=cgroup.enter,  # noqa: PLW1509 - one write, before exec
        )
    worker.log_path = log.name  # type: ignore[attr-defined]
    processes.procs.append(worker)
    processes.wait_ready(worker)
    assert worker.pid in cgroup.pids()
    cgroup.limit(HEADROOM)
    headers = auth.key("*")

    hog = submit(client, headers, "test-hog", {"megabytes": 1024})
    task = wait_for_status(client, headers, hog, TERMINAL, timeout=60)
    log_text = Path(worker.log_path).read_text(errors="replace")
    assert task["status"] == "FAILED", (task, log_text[-3000:])
    assert task["error"]["kind"] == "OUT_OF_MEMORY" and task["error"]["code"] == "OUT_OF_MEMORY"
    assert "OOM killer" in task["error"]["message"]
    # Not retried although its policy allows three retries: it would most likely recur.
    assert task["executionMetadata"]["attempts"] == 1
    assert task["attempts"][0]["error"]["kind"] == "OUT_OF_MEMORY"

    # Any other SIGKILL of a child is still a lost worker, retried: the rise was spent.
    victim = submit(
        client,
        headers,
        "sleep",
        {"seconds": 2},
        executionConfig={"retryPolicy": {"maxRetries": 2, "retryInterval": 100}},
    )
    running = wait_for(
        lambda: (t := get(client, headers, victim))["status"] == "RUNNING" and t, timeout=30
    )
    os.kill(pid_of(running), signal.SIGKILL)
    task = wait_for_status(client, headers, victim, TERMINAL, timeout=30)
    assert task["status"] == "COMPLETED", task
    assert task["attempts"][0]["error"]["kind"] == "WORKER_LOST"
