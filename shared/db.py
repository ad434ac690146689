"""Postgres connections: a lazily created, fork-safe pool and a transaction context."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool

from shared.errors import ServiceUnavailable

psycopg2.extras.register_uuid()

# Errors that mean "the database is not reachable right now", as opposed to a bug in a query.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)


def link_options(timeout: int) -> dict[str, Any]:
    """libpq options that find a silently dead link to Postgres within about `timeout` seconds.

    A partition drops packets without a reset: a query sent on a pooled connection would wait
    for the kernel's retransmissions (some 15 minutes) instead of failing, and a request would
    hang instead of answering 503. Data unacknowledged for `timeout` seconds, or an idle link
    silent to three keepalive probes a second apart, now ends the connection with an error.
    The server's kernel acknowledges and answers probes however busy Postgres is, so a slow
    query is never cut short by this.
    """
    return {
        "keepalives": 1,
        "keepalives_idle": timeout,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": timeout * 1000,
    }


class Database:
    """A connection pool for one DSN that re-creates itself after a fork (never share sockets)."""

    def __init__(
        self,
        dsn: str,
        max_connections: int = 10,
        connect_timeout: int = 5,
        *,
        synchronous_commit: bool = True,
    ) -> None:
        self.dsn = dsn
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        # Off: a commit returns before its WAL reaches the disk (see Postgres'
        # synchronous_commit); for writes a crash may lose without losing a task.
        self.options = "" if synchronous_commit else "-c synchronous_commit=off"
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        pid = os.getpid()
        if self._pool is None or self._pid != pid:
            with self._lock:
                if self._pool is None or self._pid != pid:
                    # Do not close the parent's connections after a fork: that would close
                    # the parent's sockets too. Forget them and start afresh.
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        0,
                        self.max_connections,
                        self.dsn,
                        connect_timeout=self.connect_timeout,
                        application_name=f"taskexec-{pid}",
                        **link_options(self.connect_timeout),
                        **({"options": self.options} if self.options else {}),
                    )
                    # psycopg2 closes a returned connection once `minconn` are idle, so
                    # with 0 every use would open a new one. Connect lazily (0 at start)
                    # but keep up to the maximum open for reuse.
                    self._pool.minconn = self.max_connections
                    self._pid = pid
        return self._pool

    @contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
        """Yield a connection in a transaction: commit on success, roll back on error.

        With `autocommit`, every statement commits on its own. For a block of one statement
        (or of reads that need no common snapshot) that is just as atomic and saves two round
        trips: psycopg2 sends BEGIN and COMMIT as statements of their own.
        """
        try:
            pool = self._get_pool()
            conn = self._live_connection(pool)
        except UNAVAILABLE_ERRORS as exc:
            raise ServiceUnavailable("the database is unavailable") from exc
        except psycopg2.pool.PoolError as exc:
            raise ServiceUnavailable("no database connection is free") from exc
        broken = False
        try:
            if autocommit:
                conn.autocommit = True
            yield conn
            conn.commit()
        except UNAVAILABLE_ERRORS as exc:
            broken = True
            raise ServiceUnavailable("the database connection was lost") from exc
        except BaseException:
            try:
                conn.rollback()
            except UNAVAILABLE_ERRORS:
                broken = True
            raise
        finally:
            if autocommit and not conn.closed:
                try:
                    conn.autocommit = False
                except psycopg2.Error:
                    broken = True
            pool.putconn(conn, close=broken or bool(conn.closed))

    def _live_connection(
        self, pool: psycopg2.pool.ThreadedConnectionPool
    ) -> psycopg2.extensions.connection:
        # After a Postgres restart every pooled connection is dead; drop those instead of
        # failing one request per connection with a 503.
        for _ in range(self.max_connections):
            conn = pool.getconn()
            if not _closed_by_server(conn):
                return conn
            pool.putconn(conn, close=True)
        return pool.getconn()

    def close(self) -> None:
        """Close every pooled connection of this process."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.closeall()
        self._pool = None


def _closed_by_server(conn: psycopg2.extensions.connection) -> bool:
    """Say, without a round trip, whether the server ended an idle connection."""
    if conn.closed:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        # An idle connection has nothing to read unless the server said goodbye or hung up.
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg2.InterfaceError):
        return True


def connect(dsn: str, connect_timeout: int = 5) -> psycopg2.extensions.connection:
    """Open one plain connection (migrations, CLI, tests)."""
    try:
        return psycopg2.connect(
            dsn, connect_timeout=connect_timeout, **link_options(connect_timeout)
        )
    except UNAVAILABLE_ERRORS as exc:
        raise ServiceUnavailable(f"cannot connect to the database: {exc}".strip()) from exc
