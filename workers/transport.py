"""The workers' Redis transport: one client per channel, and a lost connection fails cleanly.

Celery 5.7 handles a lost broker connection by collecting it (which detaches the transport
from its connection) and then closing it again. A Redis channel that still held
unacknowledged messages then needs its connection once more, for the second close or for a
late ack of a task that finished meanwhile, and finds None: kombu raises AttributeError,
which Celery treats as unrecoverable, so the worker exits whenever Redis restarts under load
(found by tests/reliability). Raising a connection error instead lets Celery's own handlers
log it and reconnect. Messages left unacknowledged that way wait in Redis for the visibility
timeout; the ledger's sweeper has long republished their tasks by then, and a late duplicate
finds nothing to claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.transport
import redis
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

#: URL schemes served by kombu's Redis transport, and so by this one once installed.
SCHEMES = ("redis", "rediss")


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """A Redis channel that reuses one client and refuses cleanly once its connection is gone."""

    _sync_client: redis.Redis | None = None

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was already closed")
        return super()._connparams(asynchronous=asynchronous)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """Yield `client`, or this channel's own client over its connection pool.

        kombu builds a new client for every call, i.e. for every message the worker takes
        (recorded as unacked), every ack and every event: a fifth of the worker parent's CPU
        per task in the profile. A client holds no connection of its own (it borrows one from
        the pool per command), so one per channel serves them all; it is rebuilt whenever
        the channel's pool was (after a reconnect), so it never outlives its connection.
        """
        if client:
            yield client
            return
        pool = self.pool  # raises once the connection was collected (see _connparams)
        cached = self._sync_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._sync_client = self._create_client()
        yield cached


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with the channel above."""

    Channel = Channel


def install() -> None:
    """Make `redis://` and `rediss://` broker URLs use this transport in this process.

    Through kombu's alias table rather than Celery's `broker_transport`, so URLs keep their
    scheme (logs, and Flower, which picks its broker client by the scheme, are unchanged).
    """
    for scheme in SCHEMES:
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        kombu.transport._transport_cache.pop(scheme, None)  # resolved before: resolve again
