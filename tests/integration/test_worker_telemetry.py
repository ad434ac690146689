"""A real worker's telemetry: metrics summed over its pool, task logs, JSON logs with context."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _submit(client: Any, headers: dict[str, str], definition: str, data: Any, **extra: Any) -> str:
    response = client.post(
        "/api/v1/tasks",
        json={"taskDefinitionId": definition, "input": data, **extra},
        headers=headers,
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def test_worker_metrics_count_outcomes_across_the_pool(client, auth, processes, tmp_path):
    shared = tmp_path / "api-metrics"  # the API's directory: a worker must not use it
    shared.mkdir()
    port = _free_port()
    worker = processes.worker(
        concurrency=2,
        extra_env={
            "TASKEXEC_METRICS_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(shared),
            "TASKEXEC_LOG_FORMAT": "json",
            # Celery's line per finished task: an echo attempt logs nothing of its own.
            "TASKEXEC_WORKER_TASK_LOG": "true",
        },
    )
    log_path = Path(worker.log_path)  # type: ignore[attr-defined]
    served = wait_for(lambda: _served_from(log_path), timeout=20, interval=0.1)
    directory = Path(served)
    assert directory != shared and directory.is_dir()
    headers = auth.key("*")
    ids = [_submit(client, headers, "echo", {"n": n}) for n in range(6)]
    ids.append(_submit(client, headers, "flaky", {"failTimes": 1}))
    ids.append(_submit(client, headers, "sleep", {"seconds": 30}, executionConfig={"timeout": 300}))
    for task_id in ids:
        wait_for_status(client, headers, task_id, {"COMPLETED", "FAILED", "TIMED_OUT"}, 60)

    url = f"http://127.0.0.1:{port}/metrics"

    def scraped() -> str | None:
        try:
            text = requests.get(url, timeout=5).text
        except requests.ConnectionError:
            return None
        # The last outcome is counted just after the ledger write the test waited for.
        done = _sample(text, "taskexec_task_completions_total", definition="sleep")
        return text if done else None

    text = wait_for(scraped, timeout=20, interval=0.2)
    completions = "taskexec_task_completions_total"
    assert _sample(text, completions, definition="echo", status="COMPLETED") == 6
    assert _sample(text, completions, definition="flaky", status="COMPLETED") == 1
    assert _sample(text, completions, definition="sleep", status="TIMED_OUT") == 1
    assert _sample(text, "taskexec_task_retries_total", definition="flaky") == 1
    assert _sample(text, "taskexec_attempt_duration_seconds_count", definition="echo") == 6
    assert _sample(text, "taskexec_attempt_duration_seconds_count", definition="flaky") == 2
    slow = _sample(text, "taskexec_attempt_duration_seconds_sum", definition="sleep")
    assert slow is not None and slow >= 0.3
    assert (
        _sample(text, "taskexec_worker_deliveries_total", definition="flaky", outcome="retrying")
        == 1
    )
    # Both children ran attempts, and the main process served their sum.
    pids = {p.stem.rsplit("_", 1)[-1] for p in directory.glob("counter_*.db")}
    assert len(pids) >= 2, pids
    assert not list(shared.iterdir())

    records = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    started = [r for r in records if r.get("task_id") == ids[0]]
    assert started, "no JSON log line carried the task id"
    for record in started:
        assert record["definition"] == "echo"
        assert "@" in record["worker"]  # the Celery node name, as Flower shows it
    flaky_lines = [r for r in records if r.get("task_id") == ids[6]]
    assert {r["definition"] for r in flaky_lines} == {"flaky"}

    processes.stop_all()
    assert not directory.exists(), "the worker removes its metrics directory when it stops"


def _served_from(log_path: Path) -> str | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if "worker metrics on port" in line:
            return line.rsplit(" from ", 1)[-1].split('"')[0].strip()
    return None


def test_a_handler_reports_progress_and_log_lines_to_the_client(client, auth, processes):
    from tests.integration.reporting_definitions import MODULE

    worker = processes.worker(
        extra_env={"TASKEXEC_DEFINITION_MODULES": MODULE, "TASKEXEC_LOG_FORMAT": "json"}
    )
    headers = auth.key("*")
    task_id = _submit(client, headers, "test-reporter", {"steps": 4})
    task = wait_for_status(client, headers, task_id, {"COMPLETED", "FAILED"}, 30)
    assert task["status"] == "COMPLETED", task
    assert task["progress"] == {"fraction": 1.0, "message": "4/4"}

    body = client.get(f"/api/v1/tasks/{task_id}/logs", headers=headers).get_json()
    assert [(i["level"], i["message"]) for i in body["items"]] == [
        *[("INFO", f"step {n} of 4") for n in range(1, 5)],
        ("WARNING", "all steps done"),
    ]
    assert {item["attempt"] for item in body["items"]} == {1}
    assert body["nextAfter"] is None  # finished, and every line returned
    page = client.get(f"/api/v1/tasks/{task_id}/logs?limit=2", headers=headers).get_json()
    rest = client.get(
        f"/api/v1/tasks/{task_id}/logs?after={page['nextAfter']}", headers=headers
    ).get_json()
    assert [i["seq"] for i in page["items"] + rest["items"]] == [i["seq"] for i in body["items"]]

    # The handler's own process log lines carry the task's context.
    records = []
    for line in Path(worker.log_path).read_text(errors="replace").splitlines():  # type: ignore[attr-defined]
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    steps = [r for r in records if r.get("message", "").startswith("handler finished step")]
    assert len(steps) == 4
    assert all(
        r.get("task_id") == task_id and r.get("definition") == "test-reporter" for r in steps
    )
