"""GET /api/v1/queues and `taskexec queues` against real worker processes and a live API."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import submit, wait_for
from tests.integration.live_api import gunicorn
from tests.integration.test_cli_client import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXECUTOR = "standard-executor"


def _queue(client, headers) -> dict:
    response = client.get("/api/v1/queues", headers=headers)
    assert response.status_code == 200, response.get_json()
    return next(q for q in response.get_json()["items"] if q["executor"] == EXECUTOR)


def test_workers_slots_and_running_match_the_real_fleet(
    client, auth, settings, processes, tmp_path: Path
):
    admin = auth.key("*")
    processes.worker(concurrency=2)
    second = processes.worker(concurrency=3)
    idle = wait_for(lambda: (q := _queue(client, admin))["workers"] == 2 and q, timeout=30)
    assert idle["slots"] == 5
    assert (idle["waiting"], idle["dispatched"], idle["running"]) == (0, 0, 0)

    # Seven tasks of eight seconds on five slots: five run, two wait with their message in
    # Redis (a worker may hold one prefetched; it is still PENDING in the ledger).
    ids = [submit(client, admin, "sleep", {"seconds": 8}) for _ in range(7)]
    busy = wait_for(lambda: (q := _queue(client, admin))["running"] == 5 and q, timeout=30)
    assert (busy["dispatched"], busy["waiting"]) == (2, 0)
    assert busy["oldestWaitingAge"] is not None and busy["oldestWaitingAge"] >= 0

    with gunicorn(settings, tmp_path, workers=1) as url:
        live = Service(url, admin["X-API-Key"])
        shown = live.cli("queues", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        row = next(q for q in json.loads(shown.stdout)["items"] if q["executor"] == EXECUTOR)
        assert (row["workers"], row["slots"]) == (2, 5)
        assert row["running"] + row["dispatched"] + row["waiting"] <= 7
        table = live.cli("queues")
        assert table.returncode == 0, table.stderr
        header, *lines = table.stdout.splitlines()
        assert header.split() == [
            "EXECUTOR", "WAITING", "DISPATCHED", "RUNNING", "WORKERS", "SLOTS", "OLDEST",
        ]  # fmt: skip
        cells = next(line.split() for line in lines if line.startswith(EXECUTOR))
        assert cells[4:6] == ["2", "5"]
        reader = Service(url, auth.key("tasks:read", owner="bob")["X-API-Key"])
        refused = reader.cli("queues")
        assert refused.returncode == 1 and "tasks:admin" in refused.stderr

    done = wait_for(
        lambda: (q := _queue(client, admin))["running"] + q["dispatched"] == 0 and q, timeout=60
    )
    assert done["oldestWaitingAge"] is None
    assert len(ids) == 7
    # A warm shutdown takes the worker and its three slots out at once.
    os.killpg(second.pid, signal.SIGTERM)
    second.wait(30)
    gone = _queue(client, admin)
    assert (gone["workers"], gone["slots"]) == (1, 2)
