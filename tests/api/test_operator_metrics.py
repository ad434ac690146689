"""What an operator reaches for first on /metrics: running and waiting by definition, workers
up (from their heartbeats in Redis), and the build."""

from __future__ import annotations

import platform
import uuid

import pytest
import redis

from api import gauges
from shared import db, heartbeats, store
from tests.api.test_metrics import _submit, fresh_ledger, sample, scrape  # noqa: F401


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, fresh_ledger: None) -> None:  # noqa: F811
    """No caching of the scrape-time readings, so a test sees its own writes."""
    monkeypatch.setattr(gauges, "CACHE_SECONDS", 0.0)


def test_running_and_waiting_are_counted_by_definition(client, auth, settings, fresh):
    headers = auth.key("*")
    ids = [_submit(client, headers).get_json()["id"] for _ in range(3)]
    conn = db.connect(settings.database_url)
    with conn:
        assert store.claim_task(conn, uuid.UUID(ids[0]), "host", 1, 30) is not None
    conn.close()
    text = scrape(client)
    assert sample(text, "taskexec_running_tasks", definition="echo") == 1
    assert sample(text, "taskexec_waiting_tasks", definition="echo") == 2
    # Every definition a worker runs reads, 0 when idle; manual ones wait for a person.
    assert sample(text, "taskexec_waiting_tasks", definition="sleep") == 0
    assert sample(text, "taskexec_running_tasks", definition="sleep") == 0
    assert sample(text, "taskexec_waiting_tasks", definition="approve-order") is None


def test_workers_up_are_read_from_fresh_heartbeats(client, settings, fresh):
    text = scrape(client)
    assert sample(text, "taskexec_heartbeats_up") == 1
    assert sample(text, "taskexec_workers_up") == 0
    r = redis.Redis.from_url(settings.redis_url)
    heartbeats.beat(r, "a@host", ["standard-executor", "gpu"])
    heartbeats.beat(r, "b@host", ["standard-executor"])
    # A worker that stopped beating a minute ago (Redis's clock) is down.
    now = r.time()[0]
    r.zadd(heartbeats.KEY, {heartbeats.member("c@host", ["gpu"]): now - 60})
    text = scrape(client)
    assert sample(text, "taskexec_workers_up") == 2
    assert sample(text, "taskexec_executor_workers", executor="standard-executor") == 2
    assert sample(text, "taskexec_executor_workers", executor="gpu") == 1
    assert r.zcard(heartbeats.KEY) == 2, "the stale entry is dropped as it is read"

    heartbeats.leave(r, "a@host", ["standard-executor", "gpu"])
    text = scrape(client)
    assert sample(text, "taskexec_workers_up") == 1
    assert sample(text, "taskexec_executor_workers", executor="gpu") is None


def test_unreachable_heartbeats_are_reported_not_raised(app_with, fresh):
    app = app_with(redis_url="redis://127.0.0.1:1/0")
    text = scrape(app.test_client())
    assert sample(text, "taskexec_heartbeats_up") == 0
    assert sample(text, "taskexec_workers_up") is None
    assert sample(text, "taskexec_ledger_up") == 1


def test_build_info_names_the_versions(client):
    text = scrape(client)
    labels = {"python": platform.python_version()}
    assert sample(text, "taskexec_build_info", **labels) == 1
    line = next(x for x in text.splitlines() if x.startswith("taskexec_build_info{"))
    assert 'version="' in line and 'celery="5.' in line and 'version="unknown"' not in line
