"""The real `taskexec` client commands against a running API (gunicorn) and a real worker."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, SEED_ORDER, wait_for
from tests.integration.live_api import gunicorn
from workers.definitions import builtin_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIME_LINE = re.compile(r"^\d\d:\d\d:\d\d (PENDING|RUNNING|COMPLETED)", re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A running API and the environment that points the CLI at it."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.api_key = api_key

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")}
        env.update({"TASKEXEC_URL": self.url, "TASKEXEC_API_KEY": self.api_key})
        env["PYTHONPATH"] = str(ROOT)
        env.update(extra)
        return env

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `taskexec ARGS` as a subprocess; return its exit code and output."""
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env or self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def post(self, path: str, body: dict) -> dict:
        response = requests.post(
            self.url + path, json=body, headers={"X-API-Key": self.api_key}, timeout=10
        )
        assert response.status_code in (200, 201), response.text
        return response.json()


@pytest.fixture
def service(settings, auth, tmp_path: Path):
    """gunicorn serving api.wsgi:app on a free port, with the test settings."""
    with gunicorn(settings, tmp_path, workers=1) as url:
        yield Service(url, auth.key("*")["X-API-Key"])


def run_in_pty(args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run the CLI with its stdout on a terminal; return (exit code, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=ROOT,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(30), b"".join(chunks)


def test_submit_wait_get_list_with_a_worker(service, processes, tmp_path):
    processes.worker()
    order = tmp_path / "order.json"
    order.write_text(json.dumps(SEED_ORDER["input"]))

    # submit --wait: plain status lines (stdout is not a terminal), the final task, exit 0.
    done = service.cli(
        "submit",
        "calculate-order-total",
        "--input",
        f"@{order}",
        "--priority",
        "HIGH",
        "--workflow",
        "wf-cli-1",
        "--timeout",
        "30000",
        "--wait",
        "--interval",
        "0.2",
    )
    assert done.returncode == 0, done.stderr
    assert TIME_LINE.search(done.stdout), done.stdout
    assert "\r" not in done.stdout and "\x1b" not in done.stdout
    task_id = re.search(r"^submitted (\S+)$", done.stdout, re.M).group(1)
    assert re.search(r"^STATUS\s+COMPLETED$", done.stdout, re.M)
    assert re.search(r"^PRIORITY\s+HIGH$", done.stdout, re.M)
    assert '"total": 50.73' in done.stdout

    # -o json --wait: stdout is exactly the final task; live status went to stderr.
    as_json = service.cli(
        "submit", "echo", "--input", '{"a": 1}', "-o", "json", "--wait", "--interval", "0.2"
    )
    assert as_json.returncode == 0, as_json.stderr
    echoed = json.loads(as_json.stdout)
    assert echoed["status"] == "COMPLETED" and echoed["output"] == {"a": 1}
    assert TIME_LINE.search(as_json.stderr)

    # A task that fails: --wait exits 4 and shows the error.
    failed = service.cli(
        "submit",
        "process-payment",
        "--wait",
        "--interval",
        "0.2",
        "--input",
        '{"orderId": "ORD-9", "amount": 5, "currency": "XXX", "latencyMs": 0}',
    )
    assert failed.returncode == 4, failed.stdout + failed.stderr
    assert re.search(r"^STATUS\s+FAILED$", failed.stdout, re.M)
    assert "(TASK_ERROR)" in failed.stdout and "XXX" in failed.stdout

    # get: a table, or the API's JSON.
    got = service.cli("get", task_id)
    assert got.returncode == 0
    assert re.search(rf"^ID\s+{task_id}$", got.stdout, re.M)
    assert re.search(r"^WORKFLOW\s+wf-cli-1$", got.stdout, re.M)
    doc = json.loads(service.cli("get", task_id, "-o", "json").stdout)
    assert doc["id"] == task_id and doc["output"] == {
        "subtotal": 46.97,
        "tax": 3.76,
        "total": 50.73,
    }
    assert doc["executionConfig"]["timeout"] == 30000
    watched = service.cli("get", task_id, "--watch")  # already finished: returns at once
    assert watched.returncode == 0 and "COMPLETED" in watched.stdout

    # list: filters reach the API; table with a header and a page line.
    listed = service.cli("list", "--workflow", "wf-cli-1")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "DEFINITION",
        "STATUS",
        "WAITING",
        "PRIORITY",
        "WORKFLOW",
        "CREATED",
    ]
    assert len(lines) == 3 and lines[1].startswith(task_id)
    assert lines[-1] == "page 1 of 1, 1 task"
    page = json.loads(
        service.cli("list", "--status", "COMPLETED,FAILED", "--limit", "2", "-o", "json").stdout
    )
    assert page["pagination"]["limit"] == 2 and page["pagination"]["totalItems"] == 3
    assert {t["status"] for t in page["items"]} <= {"COMPLETED", "FAILED"}
    by_definition = json.loads(
        service.cli("list", "--definition", "echo", "--status", "completed", "-o", "json").stdout
    )
    assert [t["id"] for t in by_definition["items"]] == [echoed["id"]]

    # On a terminal, --wait draws a spinner line that it rewrites in place.
    code, screen = run_in_pty(
        ["submit", "sleep", "--input", '{"seconds": 1}', "--wait", "--interval", "0.2"],
        service.env(),
    )
    assert code == 0, screen
    assert b"\r\x1b[K" in screen and b"COMPLETED" in screen


def test_definitions_cancel_and_exit_codes(service):
    table = service.cli("definitions")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["ID", "TYPE", "VERSION", "NAME", "DESCRIPTION"]
    assert re.search(
        r"^calculate-order-total\s+AUTOMATED\s+\S+\s+Calculate Order Total", table.stdout, re.M
    )
    one = service.cli("definitions", "process-payment")
    assert one.returncode == 0
    version = builtin_registry().get("process-payment").version
    assert re.search(rf"^VERSION\s+{re.escape(version)}$", one.stdout, re.M)
    assert re.search(r"^EXECUTOR\s+standard-executor$", one.stdout, re.M)
    assert json.loads(service.cli("definitions", "echo", "-o", "json").stdout)["id"] == "echo"

    # No worker runs: the sleep stays PENDING until it is cancelled.
    created = json.loads(
        service.cli("submit", "sleep", "--input", '{"seconds": 30}', "-o", "json").stdout
    )
    assert created["status"] == "PENDING"
    # Ctrl-C while watching: exit 130, and the task is left alone.
    watcher = subprocess.Popen(
        [sys.executable, "-m", "cli", "get", created["id"], "--watch"],
        env=service.env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert TIME_LINE.match(watcher.stdout.readline())  # it is polling
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 130 and "not cancelled" in err
    cancelled = service.cli("cancel", created["id"], "--reason", "from the CLI", "--force")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"{created['id']} CANCELLED at ")
    task = json.loads(service.cli("get", created["id"], "-o", "json").stdout)
    assert task["cancellation"]["reason"] == "from the CLI" and task["cancellation"]["force"]
    # Exit 4 from --watch on a task that ended without completing.
    assert service.cli("get", created["id"], "--watch").returncode == 4

    # 1: the API refused; its code and message go to stderr.
    again = service.cli("cancel", created["id"])
    assert again.returncode == 1
    assert again.stderr.startswith("error: CONFLICT: ") and "(HTTP 409)" in again.stderr
    missing = service.cli("get", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "error: NOT_FOUND: " in missing.stderr
    invalid = service.cli("submit", "sleep", "--input", '{"seconds": "soon"}')
    assert invalid.returncode == 1 and "error: VALIDATION_ERROR: " in invalid.stderr
    assert '"field": "$.seconds"' in invalid.stderr  # the details are shown too
    anonymous = service.cli("list", env=service.env(TASKEXEC_API_KEY=""))
    assert anonymous.returncode == 1 and "UNAUTHORIZED" in anonymous.stderr
    # --api-key and --url override the environment.
    flags = service.cli(
        "list",
        "--api-key",
        service.api_key,
        "--url",
        service.url,
        env=service.env(TASKEXEC_API_KEY="tes_bogus", TASKEXEC_URL="http://127.0.0.1:9"),
    )
    assert flags.returncode == 0, flags.stderr

    # 2: usage errors, before any request.
    assert service.cli("submit", "echo", "--input", "{not json").returncode == 2
    assert service.cli("submit", "echo", "--input", "[1]").returncode == 2
    assert service.cli("submit", "echo", "--input", "@/no/such/file").returncode == 2
    assert service.cli("get", "a", "b", "c").returncode == 2
    assert service.cli("list", "--limit", "0").returncode == 2

    # 3: nothing listens there.
    down = service.cli("list", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "cannot reach" in down.stderr


def test_cortex_get_and_delete_shapes(service, processes):
    processes.worker()
    job = service.post("/api/v1/task-apis/echo", {"config": {"x": 1}, "timeout": 60})
    watched = service.cli("get", "echo", job["job_id"], "--watch", "--interval", "0.2")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert re.search(r"^status\s+succeeded$", watched.stdout, re.M)
    assert re.search(rf"^job id\s+{job['job_id']}$", watched.stdout, re.M)
    assert re.search(rf"^api\s+echo \({re.escape(job['api_id'])}\)$", watched.stdout, re.M)
    endpoint = f"{service.url}/api/v1/task-apis/echo/{job['job_id']}"
    assert re.search(rf"^job endpoint\s+{re.escape(endpoint)}$", watched.stdout, re.M)
    assert re.search(r"^end time\s+\S+Z$", watched.stdout, re.M)

    running = service.post("/api/v1/task-apis/sleep", {"config": {"seconds": 60}})
    wait_for(
        lambda: (
            json.loads(service.cli("get", running["job_id"], "-o", "json").stdout)["status"]
            == "RUNNING"
        ),
        20,
    )
    shown = json.loads(service.cli("get", "sleep", running["job_id"], "-o", "json").stdout)
    assert shown["job_status"]["status"] == "status_running"
    assert list(shown) == ["job_status", "endpoint", "api_spec"]
    stopped = service.cli("delete", "sleep", running["job_id"])
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"stopped job {running['job_id']}"
    after = service.cli("get", "sleep", running["job_id"])
    assert re.search(r"^status\s+stopped$", after.stdout, re.M)
    assert service.cli("get", "sleep", running["job_id"], "--watch").returncode == 4
    # Deleting it again is the API's 409; a job of another API is not found.
    assert service.cli("delete", "sleep", running["job_id"]).returncode == 1
    other = service.cli("get", "echo", running["job_id"])
    assert other.returncode == 1 and "NOT_FOUND" in other.stderr
