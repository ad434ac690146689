"""The API's /metrics: counters from responses, ledger gauges, the token, gunicorn processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import metrics
from shared import db, store
from tests.helpers import ROOT, settings_env, wait_for


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def scrape(client: Any, **kw: Any) -> str:
    response = client.get("/metrics", **kw)
    assert response.status_code == 200, response.data[:500]
    assert response.content_type.startswith("text/plain")
    return str(response.data.decode())


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return (sample(after, name, **labels) or 0.0) - (sample(before, name, **labels) or 0.0)


@pytest.fixture
def fresh_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the ledger on every scrape (no caching) so a test sees its own writes."""
    monkeypatch.setattr(metrics, "LEDGER_CACHE_SECONDS", 0.0)


def _submit(client: Any, headers: dict[str, str], definition: str = "echo", **body: Any) -> Any:
    return client.post(
        "/api/v1/tasks", json={"taskDefinitionId": definition, "input": {}, **body}, headers=headers
    )


# ------------------------------------------------------------------ counters


def test_submissions_are_counted_by_definition_on_every_surface(client, auth):
    headers = auth.key("*")
    before = scrape(client)
    assert _submit(client, headers).status_code == 201
    assert _submit(client, headers, "sleep", input={"seconds": 1}).status_code == 201
    replay = {"Idempotency-Key": "metrics-1", **headers}
    assert _submit(client, replay).status_code == 201
    assert _submit(client, replay).status_code == 200  # a replay creates nothing
    bulk = client.post(
        "/api/v1/tasks/bulk",
        json={
            "tasks": [
                {"taskDefinitionId": "echo", "input": {}},
                {"taskDefinitionId": "no-such-definition", "input": {}},
                {"taskDefinitionId": "echo", "input": {}},
            ]
        },
        headers=headers,
    )
    assert bulk.status_code == 201
    cortex = client.post("/api/v1/task-apis/echo", json={"config": {}}, headers=headers)
    assert cortex.status_code == 200, cortex.get_json()
    assert _submit(client, headers, "no-such-definition").status_code == 404
    after = scrape(client)
    name = "taskexec_tasks_submitted_total"
    assert delta(before, after, name, definition="echo") == 5
    assert delta(before, after, name, definition="sleep") == 1
    assert sample(after, name, definition="no-such-definition") is None


def test_cancels_are_counted_once_per_cancelled_task(client, auth):
    headers = auth.key("*")
    ids = [_submit(client, headers).get_json()["id"] for _ in range(3)]
    job = client.post("/api/v1/task-apis/echo", json={}, headers=headers).get_json()["job_id"]
    before = scrape(client)
    assert client.post(f"/api/v1/tasks/{ids[0]}/cancel", headers=headers).status_code == 200
    assert client.post(f"/api/v1/tasks/{ids[0]}/cancel", headers=headers).status_code == 409
    bulk = client.post(
        "/api/v1/tasks/cancel", json={"ids": [ids[0], ids[1], ids[2]]}, headers=headers
    )
    assert bulk.status_code == 200
    assert sum("error" in item for item in bulk.get_json()["items"]) == 1  # ids[0] was done
    assert client.delete(f"/api/v1/task-apis/echo/{job}", headers=headers).status_code == 200
    after = scrape(client)
    name = "taskexec_tasks_cancelled_total"
    assert delta(before, after, name, surface="tasks") == 3
    assert delta(before, after, name, surface="task_apis") == 1


def test_request_latency_is_observed_by_route_method_and_status(client, auth):
    headers = auth.key("*")
    task_id = _submit(client, headers).get_json()["id"]
    before = scrape(client)
    for _ in range(3):
        assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 200
    assert client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=headers).status_code == 404
    assert client.get("/api/v1/no-such-route", headers=headers).status_code == 404
    assert client.open("/api/v1/tasks", method="BREW", headers=headers).status_code in (400, 405)
    after = scrape(client)
    name = "taskexec_http_request_duration_seconds_count"
    route = "/api/v1/tasks/<task_id>"
    assert delta(before, after, name, method="GET", endpoint=route, status="200") == 3
    assert delta(before, after, name, method="GET", endpoint=route, status="404") == 1
    assert delta(before, after, name, method="GET", endpoint="<unmatched>", status="404") == 1
    # Arbitrary methods share one label value: a client cannot mint new series.
    assert sample(after, name, method="BREW") is None
    assert delta(before, after, name, method="OTHER") >= 1
    buckets = sample(
        after,
        "taskexec_http_request_duration_seconds_bucket",
        le="+Inf",
        method="GET",
        endpoint=route,
        status="200",
    )
    assert buckets is not None and buckets >= 3


@pytest.fixture
def limited_client(settings: Any, clean_db: None) -> Iterator[Any]:
    from api.app import create_app

    app = create_app(settings.with_overrides(ratelimit_enabled=True, ratelimit_default="2/minute"))
    yield app.test_client()
    app.extensions["taskexec"].db.close()


def test_rate_limit_refusals_are_counted_and_metrics_are_not_limited(limited_client, auth):
    headers = auth.key("*")
    before = scrape(limited_client)
    statuses = [limited_client.get("/api/v1/tasks", headers=headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    for _ in range(5):  # scrapers are exempt from the limits
        after = scrape(limited_client)
    assert delta(before, after, "taskexec_rate_limited_total", endpoint="/api/v1/tasks") == 2


# ------------------------------------------------------------------ ledger gauges


def test_ledger_gauges_count_active_tasks_and_queue_depth(client, auth, settings, fresh_ledger):
    headers = auth.key("*")
    ids = [_submit(client, headers).get_json()["id"] for _ in range(3)]
    manual = _submit(client, headers, "approve-order", input={"orderId": "ORD-1", "amount": 10})
    assert manual.status_code == 201, manual.get_json()
    conn = db.connect(settings.database_url)
    with conn:
        assert store.claim_task(conn, uuid.UUID(ids[0]), "host", 1, 30) is not None
    conn.close()
    text = scrape(client)
    assert sample(text, "taskexec_ledger_up") == 1
    assert sample(text, "taskexec_tasks", status="PENDING") == 3  # two automated, one manual
    assert sample(text, "taskexec_tasks", status="RUNNING") == 1
    assert sample(text, "taskexec_tasks", status="RETRYING") == 0
    # The manual task waits for a person, not a worker: not in any queue.
    assert sample(text, "taskexec_queue_depth", executor="standard-executor") == 2
    assert sample(text, "taskexec_queue_depth", executor="manual") is None
    age = sample(text, "taskexec_queue_oldest_pending_seconds", executor="standard-executor")
    assert age is not None and 0 <= age < 600

    assert client.post(f"/api/v1/tasks/{ids[1]}/cancel", headers=headers).status_code == 200
    text = scrape(client)
    assert sample(text, "taskexec_queue_depth", executor="standard-executor") == 1


def test_an_idle_executor_reads_zero(client, fresh_ledger):
    text = scrape(client)
    assert sample(text, "taskexec_queue_depth", executor="standard-executor") == 0
    assert sample(text, "taskexec_queue_oldest_pending_seconds") is None


def test_a_database_outage_is_reported_not_raised(settings, clean_db):
    from api.app import create_app

    app = create_app(settings.with_overrides(database_url="postgresql://postgres@127.0.0.1:9/none"))
    text = scrape(app.test_client())
    assert sample(text, "taskexec_ledger_up") == 0
    assert sample(text, "taskexec_tasks", status="PENDING") is None  # nothing made up
    assert "taskexec_http_request_duration_seconds" in text  # the counters still come


# ------------------------------------------------------------------ the token


@pytest.fixture
def token_client(settings: Any, clean_db: None) -> Iterator[Any]:
    from api.app import create_app

    app = create_app(settings.with_overrides(metrics_token="scrape-token-123"))
    yield app.test_client()
    app.extensions["taskexec"].db.close()


def test_a_configured_token_is_required(token_client, auth):
    response = token_client.get("/metrics")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "UNAUTHORIZED"
    for value in ("Bearer nope", "Bearer scrape-token-12", "Basic scrape-token-123", "Bearer é"):
        wrong = token_client.get("/metrics", headers={"Authorization": value})
        assert wrong.status_code == 401, value
    # An API key, even an all-powerful one, is not the scrape token.
    assert token_client.get("/metrics", headers=auth.key("*")).status_code == 401
    ok = token_client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
    assert ok.status_code == 200
    assert sample(ok.data.decode(), "taskexec_ledger_up") is not None


def test_without_a_token_metrics_are_open(client):
    assert client.get("/metrics").status_code == 200


# ------------------------------------------------------------------ gunicorn, several processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
def test_gunicorn_workers_are_added_up_in_multiprocess_mode(settings, clean_db, tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    port = _free_port()
    env = settings_env(settings)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    log = tmp_path / "gunicorn.log"
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "config" / "gunicorn.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--threads",
        "1",
        "api.wsgi:app",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, Path(log).read_text()[-3000:]
            try:
                return requests.get(url + "/healthz", timeout=10).status_code == 200
            except requests.RequestException:  # still booting (a busy machine is slow)
                return False

        wait_for(up, timeout=60, interval=0.2)
        sent = 0
        # Fresh connections until both processes have served (and so counted) requests; a
        # route the readiness polling above never touched, so only these are counted.
        while sent < 10 or (len(_counting_pids(directory)) < 2 and sent < 400):
            assert requests.get(url + "/api/v1/tasks", timeout=30).status_code == 401
            sent += 1
        assert len(_counting_pids(directory)) >= 2, "one gunicorn worker served everything"
        for _ in range(4):  # whichever process answers, the sum is the same
            text = requests.get(url + "/metrics", timeout=30).text
            count = sample(
                text,
                "taskexec_http_request_duration_seconds_count",
                endpoint="/api/v1/tasks",
                status="401",
            )
            assert count == sent, (count, sent)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)


def _counting_pids(directory: Path) -> set[str]:
    return {p.stem.rsplit("_", 1)[-1] for p in directory.glob("histogram_*.db")}
