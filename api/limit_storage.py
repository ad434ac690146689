"""A `limits` Redis storage that counts a hit and reads back its window in one round trip."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from limits.storage import RedisStorage
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from shared.breaker import guard

if TYPE_CHECKING:
    import redis

#: Prefix of the storage URIs this storage answers to: `taskexec+redis://host:port/db`,
#: `taskexec+rediss://...` and `taskexec+redis+unix:///path/to/socket`.
SCHEME_PREFIX = "taskexec+"

# RedisStorage's incr-with-expire, which also returns the window's remaining seconds, so the
# X-RateLimit-* headers need no GET and TTL of their own.
_INCR_EXPIRE_TTL = b"""
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if current == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""


class SingleTripRedisStorage(RedisStorage):
    """RedisStorage with `count`: a hit and its window's end (for the headers) in one trip.

    `api.limits` counts every request with `count`; the other operations are RedisStorage's
    own, each a round trip of its own.
    """

    STORAGE_SCHEME = [SCHEME_PREFIX + scheme for scheme in ("redis", "rediss", "redis+unix")]

    lua_incr_expire_ttl: redis.commands.core.Script

    def __init__(
        self,
        uri: str,
        connection_pool: redis.connection.ConnectionPool | None = None,
        key_prefix: str = RedisStorage.PREFIX,
        wrap_exceptions: bool = False,
        **options: float | str | bool,
    ) -> None:
        super().__init__(
            uri.removeprefix(SCHEME_PREFIX),
            connection_pool=connection_pool,
            key_prefix=key_prefix,
            wrap_exceptions=wrap_exceptions,
            **options,
        )

    def initialize_storage(self, uri: str) -> None:
        self._local = threading.local()
        super().initialize_storage(uri)
        # Under the process's breaker of this Redis (shared/breaker.py): once a call times out,
        # counting fails fast (the limiter then counts in memory) and so do the publishes.
        guard(self.storage)
        self.lua_incr_expire_ttl = self.get_connection().register_script(_INCR_EXPIRE_TTL)

    def count(self, key: str, expiry: int, amount: int = 1) -> tuple[int, float]:
        """Add `amount` to the window `key`; return its hits and its end (Unix time).

        Sent on a connection of this thread's own, packed and read directly: redis-py's
        command path (pool checkout with a readiness poll, retry wrapper, observability hooks,
        Script objects) cost 68 µs of CPU per call against 30 µs this way. The connection is
        of the pool's class, so under the same breaker, keepalives and timeouts.
        """
        args = (self.prefixed_key(key), expiry, amount)
        try:
            hits, ttl = self._evalsha(args)
        except RedisConnectionError:
            # A connection idle since Redis restarted fails on first use: once more, afresh.
            hits, ttl = self._evalsha(args)
        # The same arithmetic as RedisStorage.get_expiry, so the Reset header is unchanged.
        return int(hits), max(int(ttl), 0) + time.time()

    def _evalsha(self, args: tuple[str, int, int]) -> Any:
        conn = self._connection()
        try:
            try:
                conn.send_packed_command(
                    conn.pack_command("EVALSHA", self.lua_incr_expire_ttl.sha, 1, *args),
                    check_health=False,
                )
                return conn.read_response()
            except NoScriptError:  # a restarted or flushed Redis: EVAL loads it again
                conn.send_packed_command(
                    conn.pack_command("EVAL", _INCR_EXPIRE_TTL, 1, *args), check_health=False
                )
                return conn.read_response()
        except BaseException:
            conn.disconnect()  # whatever was half sent or unread must not reach the next call
            raise

    def _connection(self) -> Any:
        local = self._local
        if getattr(local, "pid", 0) != os.getpid():
            pool = self.storage.connection_pool
            local.conn = pool.connection_class(**pool.connection_kwargs)
            local.pid = os.getpid()
        return local.conn

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.count(key, expiry, amount)[0]
