"""A `limits` Redis storage that counts a hit and reads back its window in one round trip."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, NamedTuple

from limits.storage import RedisStorage

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


class _Counted(NamedTuple):
    """What one `incr` learnt about a window: its key, the hits counted in it, and its end."""

    key: str
    hits: int
    expires_at: float


class SingleTripRedisStorage(RedisStorage):
    """RedisStorage whose `get`/`get_expiry` of the key just counted answer from memory.

    flask-limiter counts a request with `incr`, then reads the same key back with `get` and
    `get_expiry` to fill the headers. Here `incr` remembers, per thread, the count and expiry
    it got from Redis, and those two reads of that key are answered from it. The memo is
    dropped before every `incr` and by `forget`, which the app calls when a request ends, so
    it never answers for another request; any other read goes to Redis.
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
        self._memo = threading.local()
        super().__init__(
            uri.removeprefix(SCHEME_PREFIX),
            connection_pool=connection_pool,
            key_prefix=key_prefix,
            wrap_exceptions=wrap_exceptions,
            **options,
        )

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        # Under the process's breaker of this Redis (shared/breaker.py): once a call times out,
        # counting fails fast (flask-limiter then counts in memory) and so do the publishes.
        guard(self.storage)
        self.lua_incr_expire_ttl = self.get_connection().register_script(_INCR_EXPIRE_TTL)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        # Forget first: if Redis fails, no older count may answer for this request.
        self.forget()
        count, ttl = self.lua_incr_expire_ttl([self.prefixed_key(key)], [expiry, amount])
        # The same arithmetic as RedisStorage.get_expiry, so the Reset header is unchanged.
        self._memo.counted = _Counted(key, int(count), max(int(ttl), 0) + time.time())
        return int(count)

    def get(self, key: str) -> int:
        counted = self._counted(key)
        return counted.hits if counted is not None else super().get(key)

    def get_expiry(self, key: str) -> float:
        counted = self._counted(key)
        return counted.expires_at if counted is not None else super().get_expiry(key)

    def clear(self, key: str) -> None:
        self.forget()
        super().clear(key)

    def reset(self) -> int | None:
        self.forget()
        return super().reset()

    def forget(self, _error: BaseException | None = None) -> None:
        """Drop this thread's memo (a Flask `teardown_request` callback)."""
        self._memo.counted = None

    def _counted(self, key: str) -> _Counted | None:
        counted: _Counted | None = getattr(self._memo, "counted", None)
        if counted is None or counted.key != key:
            return None
        # A window that has ended since (a slow request) is read afresh, as before.
        return counted if time.time() <= counted.expires_at else None
