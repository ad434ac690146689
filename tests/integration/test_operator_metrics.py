"""Operator metrics from real processes: queue wait at the claim, heartbeats, lease rescues."""

from __future__ import annotations

import time

import pytest
import requests

from api import gauges, metrics
from shared import db, store
from tests.helpers import task_row, wait_for, wait_for_status
from tests.integration.test_worker_telemetry import _free_port, _sample, _submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _scrape(url: str) -> str | None:
    try:
        return requests.get(url, timeout=5).text
    except requests.ConnectionError:
        return None


def test_a_worker_observes_queue_wait_and_is_seen_up_by_the_api(
    client, auth, processes, monkeypatch
):
    monkeypatch.setattr(gauges, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(metrics, "LEDGER_CACHE_SECONDS", 0.0)
    headers = auth.key("*")
    # Submitted before any worker runs: it waits in the queue until one starts, at least the
    # second slept here (a worker may boot in under 0.5 s on a fast machine).
    first = _submit(client, headers, "echo", {"n": 1})
    time.sleep(1.0)
    port = _free_port()
    processes.worker(concurrency=1, extra_env={"TASKEXEC_METRICS_PORT": str(port)})
    wait_for_status(client, headers, first, {"COMPLETED"}, 60)
    second = _submit(client, headers, "echo", {"n": 2})
    wait_for_status(client, headers, second, {"COMPLETED"}, 60)

    api_text = client.get("/metrics").data.decode()
    assert _sample(api_text, "taskexec_workers_up") == 1
    assert _sample(api_text, "taskexec_executor_workers", executor="standard-executor") == 1

    url = f"http://127.0.0.1:{port}/metrics"
    name = "taskexec_queue_wait_seconds"
    text = wait_for(
        lambda: (t := _scrape(url)) and _sample(t, f"{name}_count", definition="echo") == 2 and t,
        timeout=20,
        interval=0.2,
    )
    waited = _sample(text, f"{name}_sum", definition="echo")
    assert waited is not None and waited > 0
    # The first waited for the sleep and the worker's boot (seconds), the second hardly at all.
    assert _sample(text, f"{name}_bucket", definition="echo", le="0.5") == 1

    processes.stop_all()  # a warm shutdown takes the worker out at once
    assert _sample(client.get("/metrics").data.decode(), "taskexec_workers_up") == 0


def test_the_sweeper_counts_its_lease_rescues(settings, processes):
    conn = db.connect(settings.database_url)
    with conn:
        task = store.insert_tasks(conn, [task_row(task_definition_id="echo")])[0]
        # Claimed by a worker whose lease ran out a minute ago.
        assert store.claim_task(conn, task.id, "gone-host", 999999, -60) is not None
    conn.close()
    port = _free_port()
    processes.sweeper(extra_env={"TASKEXEC_METRICS_PORT": str(port)})
    url = f"http://127.0.0.1:{port}/metrics"

    def rescued() -> float | None:
        text = _scrape(url)
        return _sample(text, "taskexec_lease_rescues_total") if text else None

    assert wait_for(rescued, timeout=30, interval=0.2) == 1
