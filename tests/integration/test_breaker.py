"""The Redis circuit breaker against a real Redis made unreachable: a redis-server SIGSTOPped.

A stopped server's kernel still completes TCP handshakes, but nothing ever answers: what a
client sees of a silent partition. Every call on it waits for its socket timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from api.app import create_app
from cli.servers import RedisServer, free_port
from config.settings import Settings
from shared import db, outbox, store
from shared.breaker import (
    FIRST_COOL_OFF,
    PROBE_TIMEOUT,
    CircuitOpen,
    guard,
)
from shared.broker import Broker
from shared.db import Database
from tests.helpers import SEED_ORDER, task_row

pytestmark = pytest.mark.integration
#: What the machine's load may add to a call that should be instant (2 busy cores).
SLACK = 0.3


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", port=free_port()).start()
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGCONT)  # a stopped server would not stop
        server.stop()


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """The server stopped: connections are accepted by its kernel, and never answered."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def timed(call: Any) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test looks at which
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_a_frozen_redis_costs_one_timeout_then_calls_fail_fast_until_a_probe_finds_it_back(
    private_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    breaker = guard(client)
    # Another client of the same server, in another database: the breaker is the server's.
    other = redis.Redis.from_url(
        private_redis.url.replace("/0", "/1"), socket_timeout=1, socket_connect_timeout=1
    )
    assert guard(other) is breaker and guard(client) is breaker
    client.set("k", "v")
    other.ping()

    with frozen(private_redis):
        took, error = timed(lambda: client.get("k"))
        assert isinstance(error, redis.TimeoutError) and 1 <= took < 1 + SLACK + 0.5
        assert breaker.is_open

        # Every call of the cool-off fails at once, on every client of that server.
        calls = [lambda: client.get("k"), other.ping, lambda: client.pipeline().get("k").execute()]
        for attempt in calls:
            took, error = timed(attempt)
            assert isinstance(error, CircuitOpen) and took < SLACK, (error, took)

        # The cool-off over, eight callers at once: all fail fast, and one probe of the link
        # runs on a thread of its own (its short timeout, not the client's), finding it dead.
        time.sleep(FIRST_COOL_OFF)
        probes = breaker.probes
        results: list[tuple[float, BaseException | None]] = []
        lock = threading.Lock()

        def call() -> None:
            outcome = timed(lambda: client.get("k"))
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert breaker.probes == probes + 1
        assert all(isinstance(e, CircuitOpen) and t < SLACK for t, e in results), results
        started = time.monotonic()
        while breaker.probing:
            time.sleep(0.01)
        assert time.monotonic() - started < PROBE_TIMEOUT + SLACK
        assert breaker.is_open and breaker.opened == 1

    # Back: the next probe (after the cool-off, now 1 s) finds it, and calls go through.
    started = time.monotonic()
    while True:
        took, error = timed(lambda: client.get("k"))
        if error is None:
            break
        assert isinstance(error, CircuitOpen) and took < SLACK  # the probe: on its thread
        assert time.monotonic() - started < 2 * FIRST_COOL_OFF + SLACK + 1
        time.sleep(0.02)
    assert not breaker.is_open
    assert client.get("k") == b"v" and other.ping()


def test_guarded_connections_carry_tcp_keepalives_and_a_user_timeout(
    private_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=3, socket_connect_timeout=3)
    guard(client)
    conn = client.connection_pool.get_connection()
    try:
        sock = conn._sock  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000
    finally:
        client.connection_pool.release(conn)


def published_at(settings: Settings, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    conn = db.connect(settings.database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id, published_at FROM tasks WHERE id = ANY(%s)", (ids,))
            return dict(cur.fetchall())
    finally:
        conn.close()


def test_publishes_fail_fast_and_leave_their_rows_for_the_sweeper(
    settings: Settings, clean_db: None, private_redis: RedisServer
) -> None:
    settings = settings.with_overrides(redis_url=private_redis.url)
    broker = Broker(settings)
    broker.app.conf.broker_connection_timeout = 1  # the producer's timeout, shortened
    database = Database(settings.database_url, max_connections=2)
    wire = redis.Redis.from_url(private_redis.url)
    try:
        rounds: list[list[uuid.UUID]] = []
        took_each = []

        def publish_round() -> list[outbox.Dispatch]:
            # An owner per round: an owner with refused rows waiting has its next rows wait
            # behind them for the releaser (store.insert_tasks), unstamped and unpublished.
            owner = f"owner-{len(rounds)}"
            with database.connection() as conn:
                tasks = store.insert_tasks(conn, [task_row(owner=owner), task_row(owner=owner)])
            assert all(t.published_at is not None for t in tasks)  # stamped: publish after commit
            rounds.append([t.id for t in tasks])
            dispatches = [outbox.Dispatch.of(t) for t in tasks]
            started = time.monotonic()
            failed = outbox.publish(broker, database, dispatches)
            took_each.append(time.monotonic() - started)
            return failed

        assert publish_round() == []  # connected, sent
        with frozen(private_redis):
            assert len(publish_round()) == 2  # waits the producer's timeout: the breaker opens
            for _ in range(5):
                assert len(publish_round()) == 2  # not tried
            with pytest.raises(CircuitOpen):
                broker.queue_depths(["standard-executor"])
            with pytest.raises(CircuitOpen):  # a forced cancel's revoke, through Celery
                broker.revoke(str(uuid.uuid4()), terminate=True)
        assert 1 <= took_each[1] < 1 + SLACK + 0.5
        assert max(took_each[2:]) < SLACK, took_each
        # Refused rows lost their stamp: the sweeper's releaser publishes them.
        stamps = published_at(settings, [i for r in rounds[1:] for i in r])
        assert set(stamps.values()) == {None}

        # Redis is back: within the cool-off the publishes resume, nothing released.
        deadline = time.monotonic() + FIRST_COOL_OFF + SLACK + 1
        while publish_round():
            assert time.monotonic() < deadline, "publishing did not resume after the cool-off"
            time.sleep(0.05)
        assert all(published_at(settings, rounds[-1]).values())
        # At least once: each task either has its message in Redis or no stamp (the sweeper's).
        sent = {
            uuid.UUID(json.loads(raw)["headers"]["id"])
            for key in wire.keys("standard-executor*")  # a list per priority
            for raw in wire.lrange(key, 0, -1)
        }
        every = [i for r in rounds for i in r]
        stamps = published_at(settings, every)
        assert all(i in sent or stamps[i] is None for i in every)
        assert set(rounds[0]) | set(rounds[-1]) <= sent
    finally:
        database.close()


def test_the_api_answers_at_once_while_its_redis_is_frozen(
    settings: Settings, clean_db: None, auth: Any, private_redis: RedisServer
) -> None:
    """Rate limited, windowed and published through Redis: each submit once waited for three
    timeouts (0.5 s + 3 s + 3 s); now the first one half second, the rest milliseconds."""
    app = create_app(
        settings.with_overrides(
            redis_url=private_redis.url, ratelimit_enabled=True, ratelimit_default="1000/minute"
        )
    )
    try:
        client = app.test_client()
        headers = auth.key("*")
        assert client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers).status_code == 201
        answers = []
        with frozen(private_redis):
            for _ in range(10):
                started = time.monotonic()
                response = client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers)
                answers.append((time.monotonic() - started, response))
                time.sleep(0.1)
        took = [t for t, _ in answers]
        assert [r.status_code for _, r in answers] == [201] * 10, [r.json for _, r in answers]
        # The first one waits for the rate limiter's 0.5 s timeout, which opens the breaker:
        # the dispatch window's read and the publish are then not tried.
        assert took[0] < 0.5 + 2 * SLACK, took
        # The rest wait on no Redis call, not even the probes (on a thread of their own).
        assert max(took[1:]) < PROBE_TIMEOUT, took
        assert statistics.median(took[1:]) < SLACK, took
        # Counted in memory meanwhile (docs/security.md): headers on every answer.
        assert all("X-RateLimit-Remaining" in r.headers for _, r in answers)
        # Every one accepted is in Postgres, unstamped: the sweeper's releaser publishes it.
        ids = [uuid.UUID(r.get_json()["id"]) for _, r in answers]
        assert set(published_at(settings, ids).values()) == {None}
    finally:
        app.extensions["taskexec"].db.close()
