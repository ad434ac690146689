"""The sweeper's sleep: until its next round, woken early by a delayed submission or shutdown."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

import psycopg2
import psycopg2.extensions

from shared import db, store
from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)
#: After losing its LISTEN connection, the sweeper tries again at most this often (it still
#: sweeps on its interval meanwhile, so a delayed task is at most one interval late).
RECONNECT_EVERY_SECONDS = 5.0


class ReleaseWait:
    """Sleep on the LISTEN connection and a self-pipe, so a NOTIFY or a stop ends the sleep.

    A signal handler that sets the stop event cannot interrupt a select() (Python retries it
    after running the handler), so a thread waits for the event and writes to the pipe.
    """

    def __init__(
        self,
        dsn: str,
        stop: threading.Event,
        connect_timeout: int = 5,
        listen: Callable[[store.Conn], None] = store.listen_for_releases,
    ) -> None:
        self.dsn = dsn
        self._listen = listen  # which channel: releases, or schedules (the schedule thread)
        self.connect_timeout = connect_timeout
        self._conn: psycopg2.extensions.connection | None = None
        self._next_connect = 0.0
        self._closed = False
        self._lock = threading.Lock()  # no wake may write to a pipe that close() closed
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        threading.Thread(
            target=self._wake_on, args=(stop,), name="sweeper-stop", daemon=True
        ).start()

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self.wake()

    def wake(self) -> None:
        """End the current (or the next) sleep at once."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write, b"!")
            except BlockingIOError:
                pass  # the pipe is full: a wake is pending already

    def listen(self) -> bool:
        """Make sure the LISTEN connection is open; False while it cannot be."""
        if self._conn is not None and not self._conn.closed:
            return True
        if time.monotonic() < self._next_connect:
            return False
        self._next_connect = time.monotonic() + RECONNECT_EVERY_SECONDS
        try:
            conn = db.connect(self.dsn, self.connect_timeout)
            conn.autocommit = True
            self._listen(conn)
        except (ServiceUnavailable, psycopg2.Error) as exc:
            log.warning("cannot LISTEN for delayed tasks (sweeping on the interval): %s", exc)
            return False
        self._conn = conn
        return True

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a delayed task was submitted meanwhile."""
        conn = self._conn if self._conn is not None and not self._conn.closed else None
        watched: list[int] = [self._read] + ([conn.fileno()] if conn is not None else [])
        try:
            ready, _, _ = select.select(watched, [], [], max(seconds, 0.0))
        except (OSError, ValueError):
            self._drop()
            return False
        if self._read in ready:
            self._drain()
        if conn is None or not ready or ready == [self._read]:
            return False
        try:
            conn.poll()
        except psycopg2.Error:
            self._drop()  # the server went away: the next listen() reconnects
            return False
        notified = bool(conn.notifies)
        conn.notifies.clear()
        return notified

    def _drain(self) -> None:
        try:
            while os.read(self._read, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None

    def close(self) -> None:
        """Close the LISTEN connection and the pipe."""
        self._drop()
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read)
                os.close(self._write)
