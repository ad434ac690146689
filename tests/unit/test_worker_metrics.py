"""Worker metrics: what each delivery outcome counts, and the multiprocess directory's set-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from workers.metrics import WorkerMetrics, private_directory


@pytest.fixture
def counted() -> tuple[WorkerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return WorkerMetrics(registry), registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("completed", "COMPLETED"),
        ("failed", "FAILED"),
        ("timed_out", "TIMED_OUT"),
        ("cancelled", "CANCELLED"),
    ],
)
def test_terminal_outcomes_count_as_completions(counted, outcome, status):
    metrics, registry = counted
    metrics.observe("echo", outcome, 0.2)
    assert value(registry, "taskexec_task_completions_total", definition="echo", status=status) == 1
    assert value(registry, "taskexec_task_retries_total", definition="echo") == 0
    assert value(registry, "taskexec_attempt_duration_seconds_count", definition="echo") == 1
    assert value(registry, "taskexec_attempt_duration_seconds_sum", definition="echo") == 0.2


def test_a_retry_is_counted_as_a_retry_not_a_completion(counted):
    metrics, registry = counted
    metrics.observe("flaky", "retrying", 0.01)
    assert value(registry, "taskexec_task_retries_total", definition="flaky") == 1
    assert (
        registry.get_sample_value(
            "taskexec_task_completions_total", {"definition": "flaky", "status": "FAILED"}
        )
        is None
    )
    assert value(registry, "taskexec_attempt_duration_seconds_count", definition="flaky") == 1


@pytest.mark.parametrize("outcome", ["skipped", "superseded", "error"])
def test_deliveries_that_record_nothing_are_only_deliveries(counted, outcome):
    metrics, registry = counted
    metrics.observe("echo", outcome, 0.001)
    assert (
        value(registry, "taskexec_worker_deliveries_total", definition="echo", outcome=outcome) == 1
    )
    assert value(registry, "taskexec_task_retries_total", definition="echo") == 0
    for status in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"):
        assert (
            value(registry, "taskexec_task_completions_total", definition="echo", status=status)
            == 0
        )
    if outcome != "superseded":  # a duplicate that claimed nothing ran no attempt
        assert value(registry, "taskexec_attempt_duration_seconds_count", definition="echo") == 0


def test_each_worker_gets_a_private_exported_directory(monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/shared/with/the/api")
    first, second = private_directory(), private_directory()
    try:
        assert first != second
        assert Path(first).is_dir() and "taskexec-worker-metrics" in first
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == second
    finally:
        Path(first).rmdir()
        Path(second).rmdir()
