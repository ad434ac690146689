"""BufferedThreadWorker's event loop parts, on real loopback sockets: accepting and expiring."""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.workers.gthread import ThreadWorker

from config import gunicorn_worker
from config.gunicorn_worker import (
    ACCEPT_DEFER_SECONDS,
    ACCEPTS_PER_EVENT,
    EXPIRIES_PER_TURN,
    BufferedThreadWorker,
)

GET = b"GET /api/v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    sock.setblocking(False)  # as gthread's set_accept_enabled leaves it
    with closing(sock):
        yield sock


@pytest.fixture
def clients() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def handed_over(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections given to gthread's thread pool (recorded, not served)."""
    conns: list[Any] = []
    monkeypatch.setattr(ThreadWorker, "enqueue_req", lambda self, conn: conns.append(conn))
    return conns


def make_worker(listener: socket.socket, connections: int = 10_000) -> BufferedThreadWorker:
    cfg = Config()
    cfg.set("worker_connections", connections)
    worker = BufferedThreadWorker(
        0, os.getppid(), [listener], None, 30, cfg, logging.getLogger("test")
    )
    worker.init_reading()
    worker.poller = selectors.DefaultSelector()
    return worker


def connect(stack: ExitStack, listener: socket.socket, count: int) -> list[socket.socket]:
    address = listener.getsockname()
    socks = [stack.enter_context(closing(socket.create_connection(address))) for _ in range(count)]
    time.sleep(0.1)  # the handshakes complete in the kernel, before accept()
    return socks


def close_all(worker: BufferedThreadWorker) -> None:
    for conn in list(worker._reading):
        worker._drop(conn)
    worker.poller.close()
    worker.tmp.close()


def test_a_burst_of_connections_is_accepted_a_batch_per_event(listener, clients, handed_over):
    worker = make_worker(listener)
    connect(clients, listener, ACCEPTS_PER_EVENT + 20)
    try:
        worker.accept(listener)
        assert worker.nr_conns == len(worker._reading) == ACCEPTS_PER_EVENT
        worker.accept(listener)  # the rest, then the listener says there are no more
        assert worker.nr_conns == len(worker._reading) == ACCEPTS_PER_EVENT + 20
        worker.accept(listener)
        assert worker.nr_conns == ACCEPTS_PER_EVENT + 20
        assert len(worker.poller.get_map()) == ACCEPTS_PER_EVENT + 20  # each waits for bytes
        assert all(conn.parser is None for conn in worker._reading)  # none made yet
        assert handed_over == []
    finally:
        close_all(worker)


def test_accepting_stops_at_worker_connections(listener, clients, handed_over):
    worker = make_worker(listener, connections=30)
    connect(clients, listener, 40)
    try:
        worker.accept(listener)
        worker.accept(listener)
        assert worker.nr_conns == 30
    finally:
        close_all(worker)


def test_a_request_already_there_when_accepted_goes_to_a_thread_with_its_parser(
    listener, clients, handed_over
):
    worker = make_worker(listener)
    idle = connect(clients, listener, 5)
    idle[2].sendall(GET)
    time.sleep(0.1)
    try:
        worker.accept(listener)
        assert len(handed_over) == 1 and len(worker._reading) == 4
        conn = handed_over[0]
        assert conn.parser is not None
        assert isinstance(conn.parser.unreader, gunicorn_worker.DeadlineUnreader)
        assert next(conn.parser).path == "/api/v1/tasks"
        conn.close()
    finally:
        close_all(worker)


def test_expired_connections_are_closed_in_deadline_order_a_batch_per_turn(
    listener, clients, handed_over
):
    worker = make_worker(listener)
    socks = connect(clients, listener, EXPIRIES_PER_TURN + 30)
    try:
        for _ in range(3):
            worker.accept(listener)
        assert len(worker._reading) == len(socks)
        states = list(worker._reading.values())
        for state in states[: EXPIRIES_PER_TURN + 10]:
            state.deadline = time.monotonic() - 1
        late = worker._reading.copy()
        worker.murder_pending()
        assert len(worker._reading) == 20 + 10
        started = time.monotonic()
        worker.wait_for_and_dispatch_events(1.0)  # expired ones remain: it does not wait
        assert time.monotonic() - started < 0.5
        worker.murder_pending()
        assert list(worker._reading) == list(late)[EXPIRIES_PER_TURN + 10 :]  # unexpired stay
        assert worker.nr_conns == 20
    finally:
        close_all(worker)


def test_with_siblings_a_worker_takes_its_share_then_leaves_the_listener_a_moment(
    listener, clients, handed_over
):
    # Two workers of 4 threads: a burst of 10 is not taken whole by whichever wakes first.
    worker = make_worker(listener)
    worker.cfg.set("workers", 2)
    worker.cfg.set("threads", 4)
    worker.set_accept_enabled(True)
    connect(clients, listener, 10)
    try:
        worker.accept(listener)
        assert worker.nr_conns == 4
        assert not worker._accepting  # the others get the next connections
        worker.set_accept_enabled(True)  # as gthread's loop asks every turn: not yet
        assert not worker._accepting
        time.sleep(ACCEPT_DEFER_SECONDS * 2)
        worker.set_accept_enabled(True)
        assert worker._accepting
        worker.accept(listener)  # past its share: one share at a time
        assert worker.nr_conns == 8
        time.sleep(ACCEPT_DEFER_SECONDS * 2)
        worker.set_accept_enabled(True)
        worker.accept(listener)
        assert worker.nr_conns == 10
    finally:
        close_all(worker)
