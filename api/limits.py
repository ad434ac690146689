"""Per-principal rate limits kept in Redis (fixed windows of `limits`), with X-RateLimit-* headers.

Two buckets per principal: `default` shared by every endpoint, and `bulk` shared by the views
marked with `bulk_limit`. A request is counted once, in a before_request hook that `create_app`
registers right after `load_principal`, so the key is the principal. Public views (health, API
docs) are exempt. Unrouted requests (404/405) count too. Counting and the numbers for the headers
cost one Redis round trip (`api.limit_storage`), and every API process counts in the same Redis
keys, so a limit is exact across processes and replicas.

This replaced flask-limiter's request hooks, whose own Python (resolving limits, scopes and
exemptions, a context object and a second pass for the headers) cost more CPU than the Redis
call: the same `limits` storage, strategy and keys, one function per request
(docs/benchmarks.md, "How the figures got here"). When Redis cannot be reached, requests are
counted in process memory and Redis is probed again after 1, 2, 4 ... 32 seconds, as
flask-limiter did.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from werkzeug.exceptions import TooManyRequests

from api.auth import PUBLIC
from api.limit_storage import SCHEME_PREFIX, SingleTripRedisStorage
from config.settings import Settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
BULK = "bulk"
DEFAULT = "default"
UNROUTED = "unrouted"
#: The first part of every window's key (after the storage's own `LIMITS:` prefix).
KEY_PREFIX = "taskexec-limits"
_STORAGE_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
_MAX_PROBE_STEP = 5  # probes of a lost Redis back off 1, 2, 4 ... 32 s, then start again
_HEADER_LIMIT = "X-RateLimit-Limit"
_HEADER_REMAINING = "X-RateLimit-Remaining"
_HEADER_RESET = "X-RateLimit-Reset"


def bulk_limit(view: F) -> F:
    """Put a view under the bulk limit instead of the default one."""
    view.rate_limit_group = BULK  # type: ignore[attr-defined]
    return view


def limit_key() -> str:
    """Bucket by principal (API key or JWT subject); by client address when anonymous."""
    principal = g.get("principal")
    if principal is not None:
        return str(principal.limit_key)
    # request.remote_addr already went through ProxyFix for the trusted hops only, so a
    # client cannot pick its own bucket with a forged X-Forwarded-For.
    return f"ip:{request.remote_addr or 'unknown'}"


@functools.lru_cache(maxsize=256)
def _item(limit: str) -> RateLimitItem | None:
    """A rate such as `100/minute` parsed (asked on every request, so remembered); None: invalid."""
    try:
        return parse(limit)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _window_key(limit: str, key: str, group: str) -> str:
    """The storage key of a bucket's windows (`limits` builds it anew on every call)."""
    item = _item(limit)
    assert item is not None
    return item.key_for(KEY_PREFIX, key, group)


def storage_uri(redis_url: str) -> str:
    """Translate a Redis URL to the URI of the single-trip `limits` storage."""
    if redis_url.startswith("unix://"):
        redis_url = "redis+unix://" + redis_url.removeprefix("unix://")
    return SCHEME_PREFIX + redis_url


class _Counted:
    """One request's count: the rate it counted against, its hits, the window's end."""

    __slots__ = ("item", "hits", "expires_at")

    def __init__(self, item: RateLimitItem, hits: int, expires_at: float) -> None:
        self.item = item
        self.hits = hits
        self.expires_at = expires_at

    @property
    def reset_at(self) -> int:
        """Unix time in whole seconds when the window ends (flask-limiter's arithmetic)."""
        return int(self.expires_at + 1)


class RateLimiter:
    """Counts each request against its principal's bucket and writes the headers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = SingleTripRedisStorage(storage_uri(settings.redis_url), **_STORAGE_OPTIONS)
        self.memory = MemoryStorage()
        self._redis_lost = False
        self._probe_step = 0
        self._probed_at = 0.0
        self._probe_lock = threading.Lock()

    # ------------------------------------------------------------ per request

    def check(self) -> None:
        """Count the request (a before_request hook); refuse it with 429 past its limit."""
        g.rate_counted = None
        view = current_app.view_functions.get(request.endpoint or "")
        if getattr(view, "permission", None) == PUBLIC:
            return  # health probes and the API docs
        group = BULK if getattr(view, "rate_limit_group", None) == BULK else DEFAULT
        limit = self.current_limit(group)
        item = _item(limit)
        assert item is not None  # settings and keys are checked when made, or dropped below
        key = _window_key(limit, limit_key(), group)
        hits, expires_at = self._count(key, item.get_expiry())
        g.rate_counted = _Counted(item, hits, expires_at)
        if hits > item.amount:
            log.info("rate limit %s exceeded by %s (%s)", limit, key, request.endpoint)
            raise TooManyRequests(
                f"rate limit of {limit} exceeded; retry after the time in Retry-After"
            )

    def current_limit(self, group: str) -> str:
        """Return the limit of the current request: bulk, the key's own, or the default."""
        if group == BULK:
            return self.settings.ratelimit_bulk
        principal = g.get("principal")
        own = principal.rate_limit if principal is not None else None
        if own:
            if _item(own) is not None:
                return str(own)
            log.warning("API key %s has an invalid rate limit %r", principal.key_id, own)
        return self.settings.ratelimit_default

    def headers(self, response: Response) -> Response:
        """Write X-RateLimit-* (an after_request hook), and Retry-After on our own 429."""
        counted: _Counted | None = g.get("rate_counted")
        if counted is None:
            return response
        reset_at = counted.reset_at
        headers = response.headers
        headers[_HEADER_LIMIT] = str(counted.item.amount)
        headers[_HEADER_REMAINING] = str(max(0, counted.item.amount - counted.hits))
        headers[_HEADER_RESET] = str(reset_at)
        if response.status_code == 429 and counted.hits > counted.item.amount:
            # The window may end within the second: never tell a client to retry after 0.
            headers["Retry-After"] = str(max(1, int(reset_at - time.time())))
        return response

    # ------------------------------------------------------------ counting

    def _count(self, key: str, expiry: int) -> tuple[int, float]:
        """Count in Redis; in process memory while Redis cannot be reached."""
        if self._redis_lost and not self._redis_is_back():
            return self._count_in_memory(key, expiry)
        try:
            return self.storage.count(key, expiry)
        except Exception:  # noqa: BLE001 - any failure of the storage: count on, in memory
            if not self._redis_lost:
                log.warning("rate limit storage unreachable: counting in process memory")
                self._redis_lost = True
                self._probed_at = time.time()
            return self._count_in_memory(key, expiry)

    def _count_in_memory(self, key: str, expiry: int) -> tuple[int, float]:
        hits = self.memory.incr(key, expiry)
        return hits, self.memory.get_expiry(key)

    def _redis_is_back(self) -> bool:
        """Probe Redis at most after 1, 2, 4 ... 32 s (then from 1 s again); say if it answers."""
        with self._probe_lock:
            if self._probe_step > _MAX_PROBE_STEP:
                self._probe_step = 0
            if time.time() - self._probed_at <= 2**self._probe_step:
                return False
            self._probed_at = time.time()
            self._probe_step += 1
        try:
            alive = bool(self.storage.check())
        except Exception:  # noqa: BLE001 - still unreachable
            alive = False
        if alive:
            log.info("rate limit storage recovered: counting in Redis again")
            self._redis_lost = False
            self._probe_step = 0
        return alive


def init_limiter(app: Flask, settings: Settings) -> RateLimiter | None:
    """Attach the limiter to `app`; call it right after registering `load_principal`."""
    if not settings.ratelimit_enabled:
        return None
    limiter = RateLimiter(settings)
    app.before_request(limiter.check)
    app.after_request(limiter.headers)
    app.extensions["limiter"] = {limiter}
    return limiter
