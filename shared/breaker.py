"""A circuit breaker per Redis server and process: after a link fails, calls fail fast for a while.

A partition drops packets without a reset, so every call on a dead link waits for its socket
timeout (the broker's 3 s, the rate limiter's 0.5 s), and a request that makes three calls waits
for all three. Once one call has timed out (or could not connect), the server's breaker opens:
for a cool-off (0.5 s, doubling after each failed probe up to 4 s) every call to that server
from this process raises `CircuitOpen` at once, without touching the network. The first call
after the cool-off starts one probe of the link on a thread of its own (a fresh connection and a
PING, 0.5 s timeouts) and fails fast like the others: no request waits on a dead link after
the first has found it. A reply closes the breaker, and calls go through again; a failure opens
it for the next, longer, cool-off.

What a failed call means is up to its caller and does not change: a publish that fails leaves
its row to the sweeper (shared/outbox.py), the rate limiter counts in process memory, a read of
heartbeats or queue depths answers "unknown". Only timeouts and failures to connect open the
breaker; an error on an established connection that the server reset (a restart) does not: it
is quick, and redis-py reconnects at once.

`guard(client)` puts a redis-py client under the breaker of its server (one per host and port,
or socket path, shared by every client of the process) and turns on TCP keepalives, so a
pooled connection whose link died while idle is found dead rather than written into.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection, Connection
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

log = logging.getLogger(__name__)

#: The first cool-off after a failure; it doubles after each failed probe, up to MOST_COOL_OFF.
FIRST_COOL_OFF = 0.5
MOST_COOL_OFF = 4.0
#: Connect and read timeout of a probe: a PING answers in a millisecond on a working link, so a
#: probe that waits this long has found the link still dead. Never more than the client's own.
PROBE_TIMEOUT = 0.5
#: A probe that has not reported after this long (its thread died) no longer blocks the next.
_PROBE_LEASE = 5.0


class CircuitOpen(RedisError):
    """A call not tried: this process found the Redis server unreachable moments ago.

    A RedisError, so every caller's handling of an unreachable Redis applies; not a redis-py
    ConnectionError, so redis-py's retry (which retries those) does not try it again.
    """


def is_link_failure(error: BaseException) -> bool:
    """Whether `error` says the link is down (not that the server answered with an error)."""
    if isinstance(error, AuthenticationError | AuthorizationError):
        return False  # the server answered: the link works, the credentials do not
    return isinstance(error, RedisTimeoutError | RedisConnectionError | OSError)


class Breaker:
    """Closed (calls go through) or open until a moment; one probe per cool-off; thread-safe.

    `generation` counts closings: a call admitted before the breaker last closed (it started
    before the link was found working again) cannot open it by failing late.
    """

    def __init__(
        self,
        name: str,
        first: float = FIRST_COOL_OFF,
        most: float = MOST_COOL_OFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.first = first
        self.most = most
        self._clock = clock
        self._lock = threading.Lock()
        self._until: float | None = None  # None: closed
        self._cool_off = 0.0
        self._opened_at = 0.0
        self._probing_since: float | None = None
        self.generation = 0
        #: Times the breaker opened from closed, calls failed fast, probes made (for tests, logs).
        self.opened = 0
        self.refused = 0
        self.probes = 0
        _ALL.add(self)

    @property
    def is_open(self) -> bool:
        return self._until is not None

    @property
    def probing(self) -> bool:
        """Whether a probe of the link is running."""
        return self._probing_since is not None

    def admit(self, probe: Callable[[], None]) -> int:
        """Let a call go (return the generation it runs in), or raise CircuitOpen.

        Closed costs one attribute read and no lock. Open: every call fails fast; the first
        one after the cool-off also starts `probe` (which raises on a dead link) on a thread.
        """
        if self._until is None:
            return self.generation
        with self._lock:
            if self._until is None:
                return self.generation
            now = self._clock()
            probing = self._probing_since is not None and now < self._probing_since + _PROBE_LEASE
            start = now >= self._until and not probing
            if start:
                self._probing_since = now
                self.probes += 1
            self.refused += 1
            wait = max(self._until - now, 0.0)
        if start:
            threading.Thread(
                target=self.run_probe, args=(probe,), name=f"redis-probe {self.name}", daemon=True
            ).start()
        raise CircuitOpen(
            f"Redis {self.name} unreachable moments ago: not tried"
            + (" (probing it)" if start or probing else f" (next probe in {wait:.1f} s)")
        )

    def run_probe(self, probe: Callable[[], None]) -> bool:
        """Run `probe` and close the breaker if the server answered; say whether it did."""
        try:
            probe()
        except RedisError as exc:
            if is_link_failure(exc):
                self._probe_failed(exc)
                return False
        except OSError as exc:
            self._probe_failed(exc)
            return False
        except BaseException:
            with self._lock:
                self._probing_since = None  # not an answer either way: let the next one probe
            raise
        # A reply, even an error one (a wrong password; a dataset still loading counts as a
        # failure above, BusyLoadingError being a ConnectionError): the link works.
        self._close()
        return True

    def check(self) -> None:
        """Raise CircuitOpen while the breaker is open, without probing (for calls it cannot
        guard itself, such as Celery's own connections: the guarded calls probe)."""
        if self._until is not None:
            with self._lock:
                self.refused += 1
            raise CircuitOpen(f"Redis {self.name} unreachable moments ago: not tried")

    def failed(self, error: BaseException, generation: int | None = None) -> None:
        """A call admitted in `generation` found the link dead: open (or keep open)."""
        with self._lock:
            if generation is not None and generation < self.generation:
                return  # it started before the link was found working again
            now = self._clock()
            if self._until is None:
                self._cool_off = self.first
                self._until = now + self._cool_off
                self._opened_at = now
                self.opened += 1
                cool_off = self._cool_off
            else:
                self._until = max(self._until, now + self._cool_off)
                return
        log.warning(
            "Redis %s unreachable (%s: %s): its calls fail fast, probed after %.1f s",
            self.name,
            type(error).__name__,
            error,
            cool_off,
        )

    def _probe_failed(self, error: BaseException) -> None:
        with self._lock:
            self._probing_since = None
            self._cool_off = min(max(self._cool_off, self.first) * 2, self.most)
            self._until = self._clock() + self._cool_off
            cool_off = self._cool_off
        log.info(
            "Redis %s still unreachable (%s); next probe in %.1f s",
            self.name,
            type(error).__name__,
            cool_off,
        )

    def _close(self) -> int:
        with self._lock:
            if self._until is None:
                return self.generation
            down = self._clock() - self._opened_at
            self._until = None
            self._probing_since = None
            self._cool_off = 0.0
            self.generation += 1
            generation = self.generation
        log.warning("Redis %s reachable again after %.1f s", self.name, down)
        return generation

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._until = None
        self._probing_since = None
        self._cool_off = 0.0


_ALL: weakref.WeakSet[Breaker] = weakref.WeakSet()
_BREAKERS: dict[str, Breaker] = {}
_REGISTRY_LOCK = threading.Lock()


def breaker_for(server: str) -> Breaker:
    """This process's breaker of one Redis server (`host:port`, or `unix:/path`)."""
    with _REGISTRY_LOCK:
        found = _BREAKERS.get(server)
        if found is None:
            found = _BREAKERS[server] = Breaker(server)
        return found


def _after_fork_in_child() -> None:
    # A child starts with closed breakers and unheld locks: its links are its own.
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for breaker in list(_ALL):
        breaker._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def keepalive_options(timeout: float | None) -> dict[int, int]:
    """TCP options that find a silently dead Redis link within about `timeout` seconds.

    As shared/db.py's `link_options` for Postgres: an idle pooled connection is probed after
    `timeout` seconds of silence (3 probes a second apart), and data unacknowledged for
    `timeout` seconds (at least 1) ends the connection with an error.
    """
    seconds = max(int(round(timeout or 1)), 1)
    options: dict[int, int] = {}
    for name, value in (
        ("TCP_KEEPIDLE", seconds),
        ("TCP_KEEPINTVL", 1),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", seconds * 1000),
    ):
        if hasattr(socket, name):  # Linux has all four; other systems some
            options[getattr(socket, name)] = value
    return options


class Guarded(AbstractConnection):
    """A redis-py connection whose calls go through its server's breaker (mixed in by `guard`).

    Only the calls that can wait on the network are guarded: connecting, sending a command
    and reading its reply. A timeout of any of them, or a failure to connect, opens the
    breaker; a connection error on an established connection (a reset) does not.
    """

    breaker: ClassVar[Breaker]
    unguarded: ClassVar[type[AbstractConnection]]
    pool_kwargs: ClassVar[dict[str, Any]]
    _admitted: int = 0

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock:
            return
        self._admitted = self.breaker.admit(self._probe)
        try:
            super().connect_check_health(check_health, retry_socket_connect)
        except (RedisError, OSError) as exc:
            if is_link_failure(exc):
                self.breaker.failed(exc, self._admitted)
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._admitted = self.breaker.admit(self._probe)
        try:
            super().send_packed_command(command, check_health)
        except RedisTimeoutError as exc:
            self.breaker.failed(exc, self._admitted)
            raise

    def read_response(
        self,
        disable_decoding: bool = False,
        *,
        disconnect_on_error: bool = True,
        push_request: bool = False,
    ) -> Any:
        try:
            return super().read_response(
                disable_decoding,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        except RedisTimeoutError as exc:
            self.breaker.failed(exc, self._admitted)
            raise

    def _probe(self) -> None:
        """Connect afresh and PING, with short timeouts and no retry; raise if the link is dead."""
        kwargs = dict(self.pool_kwargs)
        timeout = min(PROBE_TIMEOUT, kwargs.get("socket_timeout") or PROBE_TIMEOUT)
        kwargs.update(
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        probe = self.unguarded(**kwargs)
        try:
            probe.send_command("PING", check_health=False)
            probe.read_response()
        finally:
            probe.disconnect()


def _server(kwargs: dict[str, Any]) -> str:
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def guard(client: redis.Redis) -> Breaker:
    """Put `client`'s connections under its server's breaker, with TCP keepalives; return it.

    Call before the client's first command: connections it made before stay unguarded.
    """
    pool = client.connection_pool
    base = pool.connection_class
    if issubclass(base, Guarded):
        return base.breaker
    kwargs = pool.connection_kwargs
    breaker = breaker_for(_server(kwargs))
    if issubclass(base, Connection):  # TCP or TLS; a unix socket has no keepalive
        kwargs["socket_keepalive"] = True
        kwargs["socket_keepalive_options"] = keepalive_options(kwargs.get("socket_timeout"))
    pool.connection_class = type(
        f"Guarded{base.__name__}",
        (Guarded, base),
        {"breaker": breaker, "unguarded": base, "pool_kwargs": kwargs},
    )
    return breaker
