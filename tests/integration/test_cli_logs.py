"""`taskexec logs`, the attempts and cancel in `taskexec get`, and `taskexec complete`, live."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, wait_for
from tests.integration.live_api import gunicorn
from tests.integration.logging_definitions import MODULE
from tests.integration.test_cli_client import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOG_LINE = re.compile(r"^\S+Z #(\d+) (INFO|WARNING)\s+(line \d+ of \d+)$")


@pytest.fixture
def service(settings, auth, tmp_path: Path):
    with gunicorn(settings, tmp_path, workers=1) as url:
        yield Service(url, auth.key("*")["X-API-Key"])


def _status(service: Service, task_id: str) -> str:
    return str(json.loads(service.cli("get", task_id, "-o", "json").stdout)["status"])


def test_logs_follow_a_task_to_its_end_and_stop_on_ctrl_c(service, processes):
    processes.worker(extra_env={"TASKEXEC_DEFINITION_MODULES": MODULE})
    task = service.post(
        "/api/v1/tasks",
        {"taskDefinitionId": "test-slow-logger", "input": {"lines": 5, "pause": 0.3}},
    )

    # --follow prints the lines as they come and returns once the task has finished.
    followed = service.cli("logs", task["id"], "--follow", "--interval", "0.2")
    assert followed.returncode == 0, followed.stderr
    lines = [LOG_LINE.match(line) for line in followed.stdout.splitlines()]
    assert all(lines), followed.stdout
    assert [m.group(3) for m in lines] == [f"line {n} of 5" for n in range(1, 6)]  # type: ignore[union-attr]
    assert lines[-1].group(2) == "WARNING" and lines[0].group(1) == "1"  # type: ignore[union-attr]
    assert _status(service, task["id"]) == "COMPLETED"
    # Without --follow: what is logged so far; -o json: one JSON object a line.
    assert service.cli("logs", task["id"]).stdout == followed.stdout
    as_json = service.cli("logs", task["id"], "-o", "json").stdout.splitlines()
    assert [json.loads(line)["message"] for line in as_json][-1] == "line 5 of 5"
    assert [json.loads(line)["seq"] for line in as_json] == sorted(
        json.loads(line)["seq"] for line in as_json
    )

    # Ctrl-C while following: exit 130, no traceback, and the task goes on.
    long = service.post(
        "/api/v1/tasks",
        {"taskDefinitionId": "test-slow-logger", "input": {"lines": 200, "pause": 0.2}},
    )
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli", "logs", long["id"], "-f", "--interval", "0.2"],
        env=service.env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert LOG_LINE.match(follower.stdout.readline().rstrip("\n"))  # it is following
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 130 and "Traceback" not in err, err
    assert _status(service, long["id"]) == "RUNNING"

    # get: the cancel (who, when, forced, why) and each attempt's outcome and error.
    cancelled = service.cli("cancel", long["id"], "--force", "--reason", "enough of that")
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: "CANCELLED" in service.cli("get", long["id"]).stdout.split("ATTEMPT")[-1], 20)
    shown = service.cli("get", long["id"]).stdout
    assert re.search(r"^CANCEL\s+by alice at \S+Z, forced: enough of that$", shown, re.M), shown
    assert re.search(r"^ATTEMPT\s+OUTCOME\s+STARTED\s+ENDED\s+WORKER\s+ERROR$", shown, re.M)
    assert re.search(
        r"^1\s+CANCELLED\s+\S+Z\s+\S+Z\s+\S+\s+CANCELLED \(\w+\): .*enough of that", shown, re.M
    ), shown


def test_get_shows_every_attempt_with_its_error(service, processes):
    processes.worker()
    done = service.cli(
        "submit", "flaky", "--input", '{"failTimes": 2}', "--wait", "--interval", "0.2"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^(\d)\s+(\S+)\s+\S+Z\s+\S+Z\s+\S+\s+(.*)$", done.stdout, re.M)
    assert [(n, outcome) for n, outcome, _ in rows][-1] == ("3", "COMPLETED"), done.stdout
    assert len(rows) == 3 and rows[2][2] == "-"
    for n, _, error in rows[:2]:
        assert f"flaky failure on attempt {n}" in error and "(TASK_ERROR)" in error, done.stdout


def test_complete_a_manual_task(service):
    task = service.post(
        "/api/v1/tasks", {"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-7"}}
    )
    done = service.cli("complete", task["id"], '{"approved": true, "approver": "dana"}')
    assert done.returncode == 0, done.stderr
    assert re.search(r"^STATUS\s+COMPLETED$", done.stdout, re.M)
    assert re.search(r'^OUTPUT\s+\{"approved": true, "approver": "dana"\}$', done.stdout, re.M)

    # -o json prints the API's task; OUTPUT may come from a file or stdin.
    other = service.post(
        "/api/v1/tasks", {"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-8"}}
    )
    piped = subprocess.run(
        [sys.executable, "-m", "cli", "complete", other["id"], "@-", "-o", "json"],
        input='{"approved": false, "comment": "no"}',
        env=service.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    doc = json.loads(piped.stdout)
    assert doc["status"] == "COMPLETED" and doc["output"] == {"approved": False, "comment": "no"}

    # The API's refusals: already completed (409), output against the schema (422).
    again = service.cli("complete", task["id"], '{"approved": true}')
    assert again.returncode == 1 and "(HTTP 409)" in again.stderr
    third = service.post(
        "/api/v1/tasks", {"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-9"}}
    )
    invalid = service.cli("complete", third["id"], '{"approved": "maybe"}')
    assert invalid.returncode == 1 and "VALIDATION_ERROR" in invalid.stderr
    # Not a JSON object: a usage error before any request.
    assert service.cli("complete", third["id"], "[true]").returncode == 2
