"""`taskexec dev` with nothing configured: embedded servers, a task end to end, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cli.servers import free_port
from tests.conftest import ROOT, SEED_ORDER

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


def test_dev_runs_everything_embedded_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("TASKEXEC_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "dev",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                "--concurrency",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        key = None
        while time.monotonic() < deadline and key is None:
            match = re.search(r"every permission: (tes_\S+)", log_path.read_text(errors="replace"))
            key = match.group(1) if match else None
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.3)
        assert key, "dev never printed a key:\n" + log_path.read_text()[-3000:]
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                if _http("GET", base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        status, body = _http("POST", base + "/api/v1/tasks", key, SEED_ORDER)
        assert status == 201, body
        while time.monotonic() < deadline:
            status, task = _http("GET", f"{base}/api/v1/tasks/{body['id']}", key)
            if task.get("status") in ("COMPLETED", "FAILED"):
                break
            time.sleep(0.3)
        assert task["status"] == "COMPLETED", task
        assert task["output"] == {"subtotal": 46.97, "tax": 3.76, "total": 50.73}
        text = log_path.read_text()
        assert "   api | " in text and "worker | " in text and "  beat | " in text
        children = _descendants(proc.pid)
        assert children, "dev started no child processes"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        proc.wait(60)
    time.sleep(1)
    alive = [
        pid
        for pid in children
        if Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    ]
    assert not alive, f"processes left running after Ctrl-C: {alive}"
