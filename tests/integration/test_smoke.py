"""The seed's order example end to end: HTTP submit, a real Celery worker, Postgres status."""

import pytest

from tests.helpers import SEED_ORDER, wait_for_status

pytestmark = pytest.mark.integration


def test_seed_order_completes_with_the_seed_figures(client, auth, processes):
    processes.worker()
    headers = auth.key("*")
    task_id = client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers).get_json()["id"]
    task = wait_for_status(client, headers, task_id, {"COMPLETED", "FAILED"})
    assert task["status"] == "COMPLETED", task
    assert task["output"] == {"subtotal": 46.97, "tax": 3.76, "total": 50.73}
    meta = task["executionMetadata"]
    assert meta["attempts"] == 1 and meta["duration"] >= 0
    assert ":" in meta["executionEnvironment"]
