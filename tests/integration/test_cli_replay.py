"""`taskexec retry` against a running API: one task by id, many by filter (issue 17, part 2)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.base import ledger
from cli.client import since_time
from tests.integration.live_api import gunicorn
from tests.integration.test_cli_client import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def live(settings, auth, tmp_path: Path):
    with gunicorn(settings, tmp_path, workers=1) as url:
        yield Service(url, auth.key("*")["X-API-Key"])


def fail(database_url: str, *task_ids: str) -> None:
    """End tasks FAILED, as a worker whose handler raised would."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET status = 'FAILED', end_time = now() WHERE id = ANY(%s::uuid[])",
            (list(task_ids),),
        )


def test_retry_one_task_with_new_input(live, backends):
    original = live.post("/api/v1/tasks", {"taskDefinitionId": "sleep", "input": {"seconds": 9}})
    fail(backends.database_url, original["id"])
    done = live.cli("retry", original["id"], "--input", '{"seconds": 1}', "-o", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["retryOf"] == original["id"] and doc["status"] == "PENDING"
    task = json.loads(live.cli("get", doc["id"], "-o", "json").stdout)
    assert task["input"] == {"seconds": 1} and task["retryOf"] == original["id"]
    # Bad input is the API's 422: exit 1 with its message.
    bad = live.cli("retry", original["id"], "--input", '{"seconds": "x"}')
    assert bad.returncode == 1 and "input" in bad.stderr.lower()
    # A task still PENDING is not retried.
    pending = live.post("/api/v1/tasks", {"taskDefinitionId": "echo", "input": {}})
    refused = live.cli("retry", pending["id"])
    assert refused.returncode == 1
    assert "only FAILED, TIMED_OUT or CANCELLED" in refused.stderr, refused.stderr


def test_retry_by_filter_replays_each_failed_task_once(live, backends):
    echo = [
        live.post("/api/v1/tasks", {"taskDefinitionId": "echo", "input": {"i": i}})
        for i in range(3)
    ]
    other = live.post("/api/v1/tasks", {"taskDefinitionId": "sleep", "input": {"seconds": 1}})
    fail(backends.database_url, *(t["id"] for t in echo), other["id"])
    done = live.cli("retry", "--status", "FAILED", "--definition", "echo", "--since", "1h")
    assert done.returncode == 0, done.stderr
    retried = set(re.findall(r"\(retry of (\S+)\)", done.stdout))
    assert retried == {t["id"] for t in echo}
    assert "retried 3 of 3 task(s)" in done.stdout
    again = live.cli("retry", "--status", "FAILED", "--definition", "echo", "-o", "json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"items": []}
    # Usage errors: nothing to go by, an id with filters, a status never retried.
    assert live.cli("retry").returncode == 2
    assert live.cli("retry", echo[0]["id"], "--status", "FAILED").returncode == 2
    assert live.cli("retry", "--status", "COMPLETED").returncode == 2


def test_since_takes_an_age_or_a_time():
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert since_time("90s", now) == "2026-12-06T11:58:30Z"
    assert since_time("12h", now) == "2026-12-06T00:00:00Z"
    assert since_time("7d", now) == "2026-11-29T12:00:00Z"
    assert since_time("2026-12-01T00:00:00Z", now) == "2026-12-01T00:00:00Z"
