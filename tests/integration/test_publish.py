"""Publishing: one round trip per batch, writing exactly what Celery's send_task writes."""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kombu.pools
import pytest
import redis
from celery._state import _task_stack

from cli.servers import RedisServer, free_port
from config.settings import Settings
from shared import db, store
from shared.breaker import FIRST_COOL_OFF
from shared.broker import (
    BROKER_ERRORS,
    Broker,
    WireFormat,
    make_celery,
    time_limits,
)
from shared.definitions import celery_task_name
from shared.outbox import Dispatch
from shared.status import TERMINAL, Priority
from tests.helpers import task_row, wait_for_status

pytestmark = pytest.mark.integration

#: The envelope fields that differ between two publishes of one task by nature: kombu draws
#: a fresh uuid4 delivery tag per publish, and a countdown's ETA is "now + countdown".
RANDOM_FIELDS = (("properties", "delivery_tag"), ("headers", "eta"))

DISPATCH_CASES = [  # (priority rank, executor, timeout_ms, countdown)
    pytest.param(0, "standard-executor", 60_000, None, id="low"),
    pytest.param(1, "standard-executor", 1_500, None, id="medium"),
    pytest.param(2, "gpu-executor", 250, None, id="high-other-executor"),
    pytest.param(3, "standard-executor", 3_600_000, None, id="critical"),
    pytest.param(1, "standard-executor", 30_000, 2.5, id="medium-countdown"),
    pytest.param(3, "remote-executor", 1, 0.3, id="critical-countdown-other-executor"),
]


def send_task(broker: Broker, dispatch: Dispatch, countdown: float | None = None) -> None:
    """Publish as the producer always had: Celery's send_task, with the arguments it passed."""
    soft, hard = time_limits(dispatch.timeout_ms, broker.settings.hard_timeout_grace)
    broker.app.send_task(
        celery_task_name(dispatch.task_definition_id),
        args=[str(dispatch.id)],
        task_id=str(dispatch.id),
        queue=dispatch.executor,
        priority=Priority.from_rank(dispatch.priority).broker_priority,
        soft_time_limit=soft,
        time_limit=hard,
        countdown=countdown,
    )


def contents(client: redis.Redis) -> dict[bytes, list[bytes]]:
    """Every key in Redis: a list's entries in order, a set's members sorted."""
    found: dict[bytes, list[bytes]] = {}
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"list":
            found[key] = client.lrange(key, 0, -1)
        else:
            assert kind == b"set", (key, kind)
            found[key] = sorted(client.smembers(key))
    return found


def without_random_fields(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """Return the raw entry with its random values blanked out, and those values."""
    envelope = json.loads(raw)
    values = {}
    text = raw.decode()
    for part, name in RANDOM_FIELDS:
        value = envelope[part][name]
        values[name] = value
        if value is not None:
            assert text.count(json.dumps(value)) == 1
            text = text.replace(json.dumps(value), f'"<{name}>"')
    return text.encode(), values


def assert_same_redis_writes(old: dict[bytes, list[bytes]], new: dict[bytes, list[bytes]]) -> None:
    """Same keys, same sets, and list entries equal byte for byte but for the random fields."""
    assert sorted(new) == sorted(old)
    for key, old_entries in old.items():
        new_entries = new[key]
        if b"_kombu.binding" in key:  # sets of members
            assert new_entries == old_entries, key
            continue
        assert len(new_entries) == len(old_entries), key
        for old_raw, new_raw in zip(old_entries, new_entries, strict=True):
            old_text, old_values = without_random_fields(old_raw)
            new_text, new_values = without_random_fields(new_raw)
            assert new_text == old_text
            assert new_values["delivery_tag"] != old_values["delivery_tag"]
            uuid.UUID(new_values["delivery_tag"])
            if old_values["eta"] is None:
                assert new_values["eta"] is None
            else:  # both "now + countdown", taken a moment apart
                gap = datetime.fromisoformat(new_values["eta"]) - datetime.fromisoformat(
                    old_values["eta"]
                )
                assert timedelta(0) <= gap < timedelta(seconds=5)


@pytest.fixture
def wire(settings: Settings, clean_db: None) -> redis.Redis:
    """A client of the tests' private Redis, emptied for this test."""
    return redis.Redis.from_url(settings.redis_url)


def publish_both_ways(
    wire: redis.Redis, broker: Broker, dispatches: list[Dispatch], countdown: float | None = None
) -> tuple[dict[bytes, list[bytes]], dict[bytes, list[bytes]]]:
    """What send_task writes for the dispatches, then what the broker writes, from empty."""
    # kombu's producer connections are pooled per process, each declaring a queue (its
    # binding) once: start from none, as the first publish of a fresh process does.
    kombu.pools.reset()
    wire.flushall()
    for dispatch in dispatches:
        send_task(broker, dispatch, countdown)
    old = contents(wire)
    wire.flushall()
    if countdown is None:
        assert broker.publish_many(dispatches) == []
    else:
        for dispatch in dispatches:
            broker.publish(dispatch, countdown)
    new = contents(wire)
    wire.flushall()
    return old, new


@pytest.mark.parametrize(("rank", "executor", "timeout_ms", "countdown"), DISPATCH_CASES)
def test_the_message_and_its_list_are_those_of_send_task(
    wire: redis.Redis,
    settings: Settings,
    rank: int,
    executor: str,
    timeout_ms: int,
    countdown: float | None,
) -> None:
    dispatch = Dispatch(uuid.uuid4(), "calculate-order-total", executor, rank, timeout_ms)
    old, new = publish_both_ways(wire, Broker(settings), [dispatch], countdown)
    assert_same_redis_writes(old, new)

    # And it is the message a worker expects, in the list its priority is served from.
    step = Priority.from_rank(rank).broker_priority
    (key,) = (k for k in new if not k.startswith(b"_kombu."))
    assert key == (f"{executor}:{step}" if step else executor).encode()
    (raw,) = new[key]
    envelope = json.loads(raw)
    soft, hard = time_limits(timeout_ms, settings.hard_timeout_grace)
    assert envelope["headers"]["task"] == "taskexec.calculate-order-total"
    assert envelope["headers"]["timelimit"] == [hard, soft]
    assert (envelope["headers"]["eta"] is None) == (countdown is None)
    assert envelope["properties"]["priority"] == step
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": executor}
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert (args, kwargs) == ([str(dispatch.id)], {})
    assert new[f"_kombu.binding.{executor}".encode()] == [f"{executor}::{executor}".encode()]


def test_a_batch_writes_what_send_task_writes_message_for_message(
    wire: redis.Redis, settings: Settings
) -> None:
    dispatches = [
        Dispatch(uuid.uuid4(), definition, executor, rank, timeout_ms)
        for definition, executor, rank, timeout_ms in [
            ("echo", "standard-executor", 1, 1000),
            ("sleep", "standard-executor", 1, 2000),
            ("echo", "gpu-executor", 3, 3000),
            ("flaky", "standard-executor", 0, 4000),
            ("echo", "standard-executor", 1, 5000),
            ("echo", "gpu-executor", 3, 6000),
        ]
    ]
    old, new = publish_both_ways(wire, Broker(settings), dispatches)
    assert_same_redis_writes(old, new)
    assert len(new[b"standard-executor:6"]) == 3  # in order: compared entry by entry


def test_a_retry_from_a_running_attempt_of_a_worker_app_is_linked_as_send_task_links_it(
    wire: redis.Redis, settings: Settings
) -> None:
    # The worker's app has the definitions' tasks registered (send_task merges their options),
    # and a retry is published from inside the attempt (send_task sets root and parent ids).
    app = make_celery(settings)
    name = celery_task_name("echo")

    def run(self: Any, task_id: str) -> str:  # pragma: no cover - never runs here
        return task_id

    app.task(run, name=name, bind=True, acks_late=True, ignore_result=True)
    task = app.tasks[name]
    broker = Broker(settings, app)
    dispatch = Dispatch(uuid.uuid4(), "echo", "standard-executor", 2, 2000)
    task.push_request(id=str(dispatch.id), root_id=str(dispatch.id), called_directly=False)
    _task_stack.push(task)
    try:
        assert app.current_worker_task is task
        old, new = publish_both_ways(wire, broker, [dispatch], countdown=0.5)
    finally:
        _task_stack.pop()
        task.pop_request()
    assert_same_redis_writes(old, new)
    (raw,) = new[b"standard-executor:3"]
    headers = json.loads(raw)["headers"]
    assert headers["parent_id"] == headers["root_id"] == str(dispatch.id)


def test_other_transport_options_are_followed_as_kombu_follows_them(
    wire: redis.Redis, settings: Settings
) -> None:
    # kombu's defaults (four priority steps, its own separator) and a global key prefix.
    app = make_celery(settings)
    app.conf.broker_transport_options = {"global_keyprefix": "tx."}
    broker = Broker(settings, app)
    dispatches = [Dispatch(uuid.uuid4(), "echo", "standard-executor", r, 1000) for r in range(4)]
    old, new = publish_both_ways(wire, broker, dispatches)
    assert_same_redis_writes(old, new)
    assert all(key.startswith(b"tx.") for key in new)
    assert len(new) == 2 + 4  # the two binding sets, and a list per priority step


def test_the_list_for_every_priority_is_the_one_kombu_reads(settings: Settings) -> None:
    app = make_celery(settings)
    wire_format = WireFormat.of(app)
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for priority in range(-1, 12):
            step = channel._get_message_priority({"properties": {"priority": priority}})
            expected = channel._q_for_pri("standard-executor", step)
            assert wire_format.list_key("standard-executor", priority) == expected


# ---------------------------------------------------------------- round trips


class TurnCounter:
    """A TCP relay to Redis that counts request/reply turns.

    What the client sends is held until it pauses, then forwarded at once and counted as one
    turn, so a server replying to the first commands of a pipeline while the rest is still on
    its way cannot split it. A client that waits for each reply makes one turn per command.
    """

    PAUSE = 0.05

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.turns = 0
        self.closed = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        with client, server, selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(server, selectors.EVENT_READ)
            held = bytearray()
            while not self.closed:
                events = selector.select(self.PAUSE if held else 0.5)
                if not events and held:
                    server.sendall(held)
                    held.clear()
                    self.turns += 1
                for key, _ in events:
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.fileobj is client:
                        held += data
                    else:
                        client.sendall(data)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def command_calls(client: redis.Redis) -> dict[str, int]:
    """How many times Redis ran each command (INFO commandstats)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}


def test_a_batch_is_one_round_trip(wire: redis.Redis, settings: Settings) -> None:
    port = wire.connection_pool.connection_kwargs["port"]
    counter = TurnCounter(port)
    try:
        relayed = settings.with_overrides(redis_url=counter.url)
        broker = Broker(relayed)
        first = [Dispatch(uuid.uuid4(), "echo", "standard-executor", 1, 1000)]
        calls = command_calls(wire)
        assert broker.publish_many(first) == []  # connects, and declares the queue
        assert delta(calls, command_calls(wire))["sadd"] == 2

        batch = [
            Dispatch(uuid.uuid4(), "echo", "standard-executor", i % 4, 1000) for i in range(100)
        ]
        turns, calls = counter.turns, command_calls(wire)
        assert broker.publish_many(batch) == []
        time.sleep(TurnCounter.PAUSE * 3)
        assert counter.turns - turns == 1
        # Nothing but the LPUSHes ran (and the INFO that took the first count).
        assert delta(calls, command_calls(wire)) == {"lpush": 100, "info": 1}

        turns = counter.turns
        broker.publish(batch[0], countdown=1.0)
        time.sleep(TurnCounter.PAUSE * 3)
        assert counter.turns - turns == 1

        # The instrument tells the old way apart: send_task waits for each command's reply.
        turns = counter.turns
        for dispatch in batch[:10]:
            send_task(broker, dispatch)
        time.sleep(TurnCounter.PAUSE * 3)
        assert counter.turns - turns >= 10
    finally:
        counter.close()


# ---------------------------------------------------------------- Redis away


def test_unreachable_redis_fails_quickly_and_nothing_counts_as_sent(settings: Settings) -> None:
    broker = Broker(settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    dispatches = [Dispatch(uuid.uuid4(), "echo", "standard-executor", 1, 1000) for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(BROKER_ERRORS):
        broker.publish(dispatches[0])
    assert broker.publish_many(dispatches) == dispatches
    assert time.monotonic() - started < 5  # two quick retries each, not a hang


def test_a_silent_redis_fails_after_the_connection_timeout_not_never(settings: Settings) -> None:
    # It accepts connections and never answers, like a frozen server.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        broker = Broker(settings.with_overrides(redis_url=url))
        dispatches = [Dispatch(uuid.uuid4(), "echo", "standard-executor", 1, 1000)]
        started = time.monotonic()
        assert broker.publish_many(dispatches) == dispatches
        elapsed = time.monotonic() - started
    timeout = broker.app.conf.broker_connection_timeout
    assert timeout <= elapsed < timeout + 5


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", port=free_port())
    yield server
    server.stop()


def test_publishing_resumes_after_redis_restarts(
    settings: Settings, private_redis: RedisServer
) -> None:
    private_redis.start()
    broker = Broker(settings.with_overrides(redis_url=private_redis.url))
    reader = redis.Redis.from_url(private_redis.url)
    dispatch = Dispatch(uuid.uuid4(), "echo", "standard-executor", 3, 1000)
    broker.publish(dispatch)
    private_redis.stop()
    with pytest.raises(BROKER_ERRORS):
        broker.publish(dispatch)
    private_redis.start()  # empty: a restart without persistence
    # The failure opened the breaker (shared/breaker.py): publishes fail unsent until its
    # cool-off ends, then a probe finds Redis back and the next one goes out.
    deadline = time.monotonic() + FIRST_COOL_OFF + 2
    while broker.publish_many([dispatch, dispatch]):
        assert time.monotonic() < deadline, "publishing did not resume after the cool-off"
        time.sleep(0.05)
    assert reader.llen("standard-executor") == 2
    # The binding is written again after the failure, as kombu declares on a new connection.
    assert reader.smembers("_kombu.binding.standard-executor") == {
        b"standard-executor::standard-executor"
    }
    private_redis.stop()
    private_redis.start()  # the pooled connection is now stale; no publish failed meanwhile
    broker.publish(dispatch)
    assert reader.llen("standard-executor") == 1


def test_a_forked_child_publishes_on_its_own_connection(
    wire: redis.Redis, settings: Settings
) -> None:
    broker = Broker(settings)
    dispatches = [Dispatch(uuid.uuid4(), "echo", "standard-executor", 3, 1000) for _ in range(3)]
    broker.publish(dispatches[0])
    connections = wire.info("stats")["total_connections_received"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            broker.publish(dispatches[1])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    broker.publish(dispatches[2])
    entries = [json.loads(raw)["headers"]["id"] for raw in wire.lrange("standard-executor", 0, -1)]
    assert entries == [str(d.id) for d in reversed(dispatches)]
    # The child connected anew, and the parent's connection still served the parent.
    assert wire.info("stats")["total_connections_received"] - connections == 1


# ---------------------------------------------------------------- a real worker


def insert_pending(settings: Settings, rank: int, definition: str = "echo") -> Dispatch:
    row = task_row(
        task_definition_id=definition,
        priority=rank,
        input={"rank": rank},
        timeout_ms=10_000,
        retry_policy={"maxRetries": 0, "retryInterval": 1000, "backoffMultiplier": 2},
    )
    conn = db.connect(settings.database_url)
    with conn:
        store.insert_tasks(conn, [row])
    conn.close()
    return Dispatch(row.id, definition, "standard-executor", rank, 10_000)


def test_a_worker_runs_what_the_broker_publishes(
    client: Any, auth: Any, processes: Any, settings: Settings
) -> None:
    headers = auth.key("*", owner="alice")
    batch = [insert_pending(settings, rank) for rank in (0, 1, 2, 3, 1)]
    delayed = insert_pending(settings, 2)
    broker = Broker(settings)
    assert broker.publish_many(batch) == []
    published_at = datetime.now(UTC)
    broker.publish(delayed, countdown=1.5)

    processes.worker(concurrency=2)  # no sweeper: these messages are the only ones
    for dispatch in [*batch, delayed]:
        task = wait_for_status(client, headers, str(dispatch.id), TERMINAL, timeout=45)
        assert task["status"] == "COMPLETED", task
        assert task["output"] == {"rank": dispatch.priority}
        assert task["executionMetadata"]["attempts"] == 1
    task = client.get(f"/api/v1/tasks/{delayed.id}", headers=headers).get_json()
    started = datetime.fromisoformat(task["executionMetadata"]["startTime"].replace("Z", "+00:00"))
    assert started >= published_at + timedelta(seconds=1.5)
