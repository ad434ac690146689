"""`taskexec get` with no argument lists every Task API, and with a name shows one (Cortex)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.live_api import gunicorn
from tests.integration.test_cli_client import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def service(settings, auth, tmp_path: Path):
    with gunicorn(settings, tmp_path, workers=1) as url:
        yield Service(url, auth.key("*")["X-API-Key"])


def test_get_lists_every_task_api_and_shows_one_by_name(service):
    # No worker runs: the job stays in progress; a stopped one has finished.
    job = service.post("/api/v1/task-apis/sleep", {"config": {"seconds": 30}})
    stopped = service.post("/api/v1/task-apis/sleep", {"config": {"seconds": 30}})
    assert service.cli("delete", "sleep", stopped["job_id"]).returncode == 0

    listed = service.cli("get")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "task api",
        "running jobs",
        "latest job id",
        "endpoint",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    endpoint = f"{service.url}/api/v1/task-apis/sleep"
    assert rows["sleep"] == ["1", job["job_id"], endpoint]
    assert rows["echo"][:2] == ["0", "-"]
    doc = json.loads(service.cli("get", "-o", "json").stdout)
    assert "calculate-order-total" in [api["api_spec"]["name"] for api in doc["items"]]

    # A name alone is the API with its jobs, as `cortex get NAME`.
    one = service.cli("get", "sleep")
    assert one.returncode == 0, one.stderr
    assert re.search(r"^task api\s+sleep \(sleep-\S+\)$", one.stdout, re.M)
    assert re.search(rf"^{job['job_id']}\s+running\s+-\s+-$", one.stdout, re.M), one.stdout
    assert re.search(rf"^{stopped['job_id']}\s+stopped\s+-\s+\S+Z$", one.stdout, re.M)
    assert one.stdout.rstrip().endswith(f"endpoint: {endpoint}")
    shown = json.loads(service.cli("get", "sleep", "-o", "json").stdout)
    assert list(shown) == ["api_spec", "endpoint", "task_job_statuses", "recent_job_statuses"]

    missing = service.cli("get", "no-such-api")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    assert service.cli("get", "--watch").returncode == 2
    # With --watch, one argument is a task id (an API is not watched).
    watched = service.cli("get", "sleep", "--watch")
    assert watched.returncode == 1 and "NOT_FOUND" in watched.stderr
