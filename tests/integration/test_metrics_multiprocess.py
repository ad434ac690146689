"""Metrics summed over every process that serves: gunicorn's workers, and all of `taskexec dev`."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import ROOT, SEED_ORDER
from tests.integration import live_api
from tests.integration.test_dev_command import (  # noqa: F401 - fixtures
    Dev,
    _http,
    data_dir,
    start_dev,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBMISSIONS = 20
SCRAPES = 24
MAX_ROUNDS = 20


def _total(text: str, name: str) -> float:
    """The sum of every sample of `name` in a Prometheus text page (0 when absent)."""
    pattern = re.compile(rf"^{name}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def _fresh(method: str, url: str, **kw: Any) -> requests.Response:
    # A new connection per request, so the kernel hands requests to different workers.
    headers = {**kw.pop("headers", {}), "Connection": "close"}
    return requests.request(method, url, headers=headers, timeout=30, **kw)


@pytest.fixture
def server(settings, clean_db, tmp_path) -> Iterator[tuple[str, Path]]:
    """gunicorn as the Procfile runs it (config/gunicorn.py), with no metrics directory set."""
    assert not settings.metrics_dir
    access_log = tmp_path / "access.log"
    extra = [
        "-c",
        str(ROOT / "config" / "gunicorn.py"),
        "--access-logfile",
        str(access_log),
        "--access-logformat",
        "%(p)s %(s)s %(U)s",
    ]
    with live_api.gunicorn(settings, tmp_path, workers=3, extra_args=extra) as url:
        yield url, access_log


def test_every_scrape_of_several_gunicorn_workers_reads_the_same_totals(server, auth):
    url, access_log = server
    headers = auth.key("*")

    def submit(n: int) -> int:
        body = {"taskDefinitionId": "echo", "input": {"n": n}}
        return _fresh("POST", f"{url}/api/v1/tasks", json=body, headers=headers).status_code

    def scrape(_: int) -> float:
        response = _fresh("GET", f"{url}/metrics")
        assert response.status_code == 200
        return _total(response.text, "taskexec_tasks_submitted_total")

    def scraped_by() -> Counter[str]:
        lines = access_log.read_text().splitlines()
        return Counter(line.split()[0] for line in lines if "/metrics" in line)

    # Concurrent, so that requests are spread over the workers (one at a time, the first
    # worker to wake takes them all). Even so the kernel may hand one round to one worker
    # (CI saw 24 of 24), so rounds go on until a second worker has answered.
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(submit, range(SUBMISSIONS))) == [201] * SUBMISSIONS
        for _ in range(MAX_ROUNDS):
            totals = list(pool.map(scrape, range(SCRAPES)))
            assert totals == [SUBMISSIONS] * SCRAPES
            if len(scraped_by()) >= 2:
                break

    # Several workers answered: with one, a per-process count would have read right too.
    assert len(scraped_by()) >= 2, f"every scrape went to one worker: {scraped_by()}"


def test_dev_serves_the_workers_series_on_the_api_metrics(
    start_dev: Callable[..., Dev],  # noqa: F811 - the fixture imported above
) -> None:
    dev = start_dev()
    key = dev.wait_ready()
    status, body = _http("POST", dev.base + "/api/v1/tasks", key, SEED_ORDER)
    assert status == 201, body

    def scraped() -> str | None:
        with requests.get(dev.base + "/metrics", timeout=10) as response:
            text = response.text
        done = _total(text, "taskexec_task_completions_total")
        return text if done else None

    deadline = time.monotonic() + 60
    text = None
    while text is None and time.monotonic() < deadline:
        text = scraped()
        time.sleep(0.3)
    assert text is not None, "the API's /metrics never showed the worker's completions"
    completed = (
        'taskexec_task_completions_total{definition="calculate-order-total",status="COMPLETED"}'
    )
    assert f"{completed} 1.0" in text
    # ... and the API's own series, summed over its two gunicorn workers.
    assert _total(text, "taskexec_tasks_submitted_total") == 1
    assert not dev.stop(signal.SIGINT, to_group=True)
