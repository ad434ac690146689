"""`taskexec submit --wait` shows the progress a built-in definition reports (`sleep`)."""

from __future__ import annotations

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


def test_submit_wait_shows_the_percentage_sleep_reports(service, processes):
    processes.worker()
    done = service.cli(
        "submit", "sleep", "--input", '{"seconds": 2}', "--wait", "--interval", "0.2"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Not a terminal: a timestamped line per change, each showing how far the sleep has got.
    shown = re.findall(r"^\d\d:\d\d:\d\d RUNNING (\d+)% (\S+s of 2s)$", done.stdout, re.M)
    assert len(shown) >= 2, done.stdout
    percentages = [int(p) for p, _ in shown]
    assert percentages == sorted(percentages) and 0 < percentages[-1] < 100
    assert re.search(r"^STATUS\s+COMPLETED$", done.stdout, re.M)
