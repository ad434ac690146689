"""Cancels as operators see them: REVOKED in Flower, counted CANCELLED in worker metrics."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import submit, wait_for, wait_for_status
from tests.integration.extra_definitions import MODULE
from tests.integration.test_flower import Flower, flower  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_cancelled_work_shows_as_revoked_in_flower_and_counts_as_cancelled(
    flower: Flower,  # noqa: F811
    processes: Any,
    client: Any,
    auth: Any,
) -> None:
    port = _free_port()
    worker = processes.worker(
        concurrency=3,
        extra_env={
            "TASKEXEC_METRICS_PORT": str(port),
            "TASKEXEC_DEFINITION_MODULES": MODULE,
            # Task events from the start: Flower would switch them on only within seconds.
            "TASKEXEC_WORKER_EVENTS": "true",
        },
    )
    wait_for(
        lambda: "worker metrics on port" in Path(worker.log_path).read_text(errors="replace"),
        timeout=20,
    )
    headers = auth.key("*")
    graceful = submit(client, headers, "sleep", {"seconds": 30})
    forced = submit(client, headers, "sleep", {"seconds": 30})
    # Deaf to the flag and SIGTERM: its child is killed, and the worker's parent records it.
    killed = submit(client, headers, "test-deaf-sleep", {"seconds": 30})
    finished = submit(client, headers, "echo", {})
    for task_id in (graceful, forced, killed):
        wait_for_status(client, headers, task_id, {"RUNNING"})
    for task_id, force in ((graceful, False), (forced, True), (killed, False)):
        response = client.post(
            f"/api/v1/tasks/{task_id}/cancel", json={"force": force}, headers=headers
        )
        assert response.status_code == 200

    def flower_states() -> dict[str, str] | None:
        response = flower.get("/api/tasks")
        assert response.status_code == 200, response.text
        tasks = response.json()
        states = {t: tasks.get(t, {}).get("state") for t in (graceful, forced, killed, finished)}
        settled = all(state in ("REVOKED", "SUCCESS", "FAILURE") for state in states.values())
        return states if settled and states[killed] != "STARTED" else None

    try:
        states = wait_for(flower_states, timeout=30, interval=0.5)
    except AssertionError:
        seen = {t: v.get("state") for t, v in flower.get("/api/tasks").json().items()}
        raise AssertionError(f"tasks not settled in Flower: {seen}\n{flower.output()}") from None
    assert states == {
        graceful: "REVOKED",
        forced: "REVOKED",
        killed: "REVOKED",
        finished: "SUCCESS",
    }, states

    def scraped() -> str | None:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        counted = _sample(
            text,
            "taskexec_task_completions_total",
            definition="test-deaf-sleep",
            status="CANCELLED",
        )
        return text if counted else None

    text = wait_for(scraped, timeout=20, interval=0.2)
    completions = "taskexec_task_completions_total"
    assert _sample(text, completions, definition="sleep", status="CANCELLED") == 2
    assert _sample(text, completions, definition="test-deaf-sleep", status="CANCELLED") == 1
    assert _sample(text, completions, definition="echo", status="COMPLETED") == 1
    deliveries = "taskexec_worker_deliveries_total"
    assert _sample(text, deliveries, definition="sleep", outcome="superseded") == 0
    assert _sample(text, deliveries, definition="sleep", outcome="cancelled") == 2
