"""`taskexec schedules …` against a running API: every subcommand, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.live_api import gunicorn
from tests.integration.test_cli_client import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def live(settings, auth, tmp_path: Path):
    with gunicorn(settings, tmp_path, workers=1) as url:
        yield Service(url, auth.key("*")["X-API-Key"])


def test_schedule_commands(live):
    made = live.cli(
        "schedules", "create", "nightly", "echo", "--cron", "30 2 * * *",
        "--timezone", "America/New_York", "--input", '{"hello": "night"}', "-o", "json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["cron"] == "30 2 * * *" and doc["task"]["input"] == {"hello": "night"}
    sid = doc["id"]

    listed = live.cli("schedules", "list")
    assert listed.returncode == 0 and sid in listed.stdout and "cron 30 2 * * *" in listed.stdout
    shown = live.cli("schedules", "get", sid)
    assert "America/New_York" in shown.stdout and "nextRunAt" in shown.stdout

    paused = json.loads(live.cli("schedules", "pause", sid, "-o", "json").stdout)
    assert paused["paused"] is True and paused["nextRunAt"] is None
    assert sid in live.cli("schedules", "list", "--paused").stdout
    resumed = json.loads(live.cli("schedules", "resume", sid, "-o", "json").stdout)
    assert resumed["paused"] is False and resumed["nextRunAt"]

    fired = live.cli("schedules", "trigger", sid, "-o", "json")
    assert fired.returncode == 0, fired.stderr
    task = json.loads(live.cli("get", json.loads(fired.stdout)["id"], "-o", "json").stdout)
    assert task["scheduleId"] == sid and task["scheduledFor"] is None

    assert live.cli("schedules", "delete", sid).returncode == 0
    gone = live.cli("schedules", "get", sid)
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert live.cli("schedules", "delete", sid).returncode == 1

    both = live.cli("schedules", "create", "x", "echo", "--cron", "* * * * *", "--interval", "1000")
    assert both.returncode == 2 and "exactly one" in both.stderr
    bad = live.cli("schedules", "create", "x", "echo", "--cron", "99 * * * *")
    assert bad.returncode == 1 and "cron" in bad.stderr
