"""No accepted task is lost: what never reached Redis is published later by the sweeper."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.servers import RedisServer, free_port
from config.settings import Settings
from shared import db, outbox, store
from shared.breaker import FIRST_COOL_OFF
from shared.broker import BROKER_ERRORS, Broker
from shared.db import Database
from shared.status import Status
from tests.helpers import SEED_ORDER, wait_for, wait_for_status

pytestmark = pytest.mark.integration
SEED_OUTPUT = {"subtotal": 46.97, "tax": 3.76, "total": 50.73}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, on a fixed port, not started yet."""
    server = RedisServer(tmp_path / "redis", port=free_port())
    yield server
    server.stop()


@pytest.fixture
def settings(base_settings: Settings, private_redis: RedisServer) -> Settings:
    """The app, workers and sweeper of these tests all use the private Redis."""
    return base_settings.with_overrides(redis_url=private_redis.url)


def read_row(settings: Settings, task_id: str) -> store.Task:
    conn = db.connect(settings.database_url)
    try:
        with conn:
            task = store.get_task(conn, uuid.UUID(task_id))
    finally:
        conn.close()
    assert task is not None
    return task


def test_a_task_submitted_while_redis_is_down_completes_once_it_is_back(
    client: Any, auth: Any, processes: Any, private_redis: RedisServer, settings: Settings
) -> None:
    assert not private_redis.is_running()
    headers = auth.key("*")
    response = client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers)
    assert response.status_code == 201, response.get_json()
    task_id = response.get_json()["id"]
    row = read_row(settings, task_id)
    assert (row.status, row.published_at) == ("PENDING", None)

    private_redis.start()
    processes.worker()
    processes.sweeper()
    task = wait_for_status(client, headers, task_id, {"COMPLETED", "FAILED"}, timeout=45)
    assert task["status"] == "COMPLETED", task
    assert task["output"] == SEED_OUTPUT
    assert task["executionMetadata"]["attempts"] == 1
    assert read_row(settings, task_id).published_at is not None


def test_a_row_committed_but_never_published_is_published_by_the_sweeper(
    client: Any, auth: Any, processes: Any, private_redis: RedisServer, settings: Settings
) -> None:
    # As if the API process died between its commit and its publish.
    private_redis.start()
    headers = auth.key("*", owner="alice")
    task_id = uuid.uuid4()
    conn = db.connect(settings.database_url)
    with conn:
        store.insert_tasks(
            conn,
            [
                store.NewTask(
                    id=task_id,
                    owner="alice",
                    task_definition_id="calculate-order-total",
                    definition_version="1.2.0",
                    workflow_instance_id="order-workflow-789",
                    type="AUTOMATED",
                    priority=1,
                    executor="standard-executor",
                    input=SEED_ORDER["input"],
                    timeout_ms=60_000,
                    retry_policy={"maxRetries": 0, "retryInterval": 1000, "backoffMultiplier": 2},
                    published=False,
                )
            ],
        )
    conn.close()

    processes.worker()
    time.sleep(1.0)  # a worker alone has no message to run
    assert read_row(settings, str(task_id)).status == "PENDING"

    processes.sweeper()
    task = wait_for_status(client, headers, str(task_id), {"COMPLETED", "FAILED"}, timeout=45)
    assert task["status"] == "COMPLETED", task
    assert task["output"] == SEED_OUTPUT


def test_publish_releases_what_the_broker_refuses(
    settings: Settings, clean_db: None, private_redis: RedisServer
) -> None:
    # The one publish path (API, retries, sweeper): a refused dispatch loses its stamp.
    database = Database(settings.database_url, max_connections=2)
    broker = Broker(settings)
    try:
        with database.connection() as conn:
            tasks = store.insert_tasks(conn, [_echo_row(), _echo_row()])
        assert all(t.status is Status.PENDING and t.published_at is not None for t in tasks)
        dispatches = [outbox.Dispatch.of(t) for t in tasks]

        # Redis is down: both are refused and released, so the next sweep takes them at once.
        assert outbox.publish(broker, database, dispatches, countdown=5.0) == dispatches
        assert [read_row(settings, str(t.id)).published_at for t in tasks] == [None, None]
        # Waiting again, ready for the releaser at once (not after republish_after).
        with database.connection() as conn:
            assert store.take_due_for_publish(conn, republish_after=3600) == []
            assert store.ready_executors(conn) == ["standard-executor"]
            due = store.take_ready(conn, "standard-executor", room=10).dispatches
        assert sorted(d.id for d in due) == sorted(t.id for t in tasks)

        # Redis is back: everything is sent and nothing released (once the breaker's cool-off
        # from the refused connection is over: shared/breaker.py).
        private_redis.start()
        time.sleep(FIRST_COOL_OFF)
        # The first call after the cool-off only starts the breaker's probe: wait for it to
        # close (a read, so nothing is published or released meanwhile).
        wait_for(lambda: _reachable(broker), timeout=10, interval=0.1)
        assert outbox.publish(broker, database, due) == []
        assert all(read_row(settings, str(t.id)).published_at is not None for t in tasks)
        wire = redis.Redis.from_url(settings.redis_url)
        assert sum(wire.llen(key) for key in wire.keys("standard-executor*")) == 2
    finally:
        database.close()


def _reachable(broker: Broker) -> bool:
    try:
        broker.queue_depths(["standard-executor"])
    except BROKER_ERRORS:
        return False
    return True


def _echo_row() -> store.NewTask:
    return store.NewTask(
        id=uuid.uuid4(),
        owner="alice",
        task_definition_id="echo",
        definition_version="1.0.0",
        workflow_instance_id=None,
        type="AUTOMATED",
        priority=1,
        executor="standard-executor",
        input={},
        timeout_ms=60_000,
        retry_policy={},
    )
