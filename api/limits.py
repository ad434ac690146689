"""Per-principal rate limits kept in Redis (flask-limiter), with X-RateLimit-* headers.

Two buckets per principal: `default` shared by every endpoint, and `bulk` shared by the views
marked with `bulk_limit`. Limits are counted once per request in the limiter's before_request
hook, which `create_app` registers right after `load_principal`, so the key is the principal.
Public views (health, API docs) are exempt. Unrouted requests (404/405) count too. Counting
and the numbers for the headers cost one Redis round trip (`api.limit_storage`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask_limiter import HeaderNames, Limit, Limiter
from limits import parse_many

from api.auth import PUBLIC
from api.limit_storage import SCHEME_PREFIX, SingleTripRedisStorage
from api.services import services
from config.settings import Settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
BULK = "bulk"
DEFAULT = "default"
UNROUTED = "unrouted"
# flask-limiter writes its Retry-After on every response, which also clobbers the one a 503
# sets; it writes this name instead, and `_retry_after` turns it into Retry-After on a 429.
_RETRY_HEADER = "X-RateLimit-Retry-After"
_STORAGE_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}


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


def _view() -> Callable[..., Any] | None:
    return current_app.view_functions.get(request.endpoint or "")  # type: ignore[return-value]


def limit_group(_endpoint: str = "") -> str:
    """Name the bucket the current request counts against (`bulk` or `default`)."""
    return BULK if getattr(_view(), "rate_limit_group", None) == BULK else DEFAULT


def current_limit() -> str:
    """Return the limit of the current request: bulk, the key's own, or the default."""
    settings = services().settings
    if limit_group() == BULK:
        return settings.ratelimit_bulk
    principal = g.get("principal")
    own = principal.rate_limit if principal is not None else None
    if own:
        if _parses(own):
            return str(own)
        log.warning("API key %s has an invalid rate limit %r", principal.key_id, own)
    return settings.ratelimit_default


@functools.lru_cache(maxsize=256)
def _parses(limit: str) -> bool:
    """Say whether a key's own limit is valid (asked on every request, so remembered)."""
    try:
        parse_many(limit)
    except ValueError:
        return False
    return True


def is_exempt() -> bool:
    """Public views (health probes, API docs) are not limited."""
    return getattr(_view(), "permission", None) == PUBLIC


def _refused_message() -> str:
    return f"rate limit of {current_limit()} exceeded; retry after the time in Retry-After"


def storage_uri(redis_url: str) -> str:
    """Translate a Redis URL to the URI of the single-trip `limits` storage."""
    if redis_url.startswith("unix://"):
        redis_url = "redis+unix://" + redis_url.removeprefix("unix://")
    return SCHEME_PREFIX + redis_url


def _retry_after(response: Response) -> Response:
    seconds = response.headers.pop(_RETRY_HEADER, None)
    if response.status_code == 429:
        try:
            wait = int(seconds) if seconds is not None else 1
        except ValueError:
            wait = 1
        # The window may end within the second: never tell a client to retry after 0.
        response.headers["Retry-After"] = str(max(1, wait))
    return response


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    """Attach the limiter to `app`; call it right after registering `load_principal`."""
    default = Limit(
        limit_provider=current_limit,
        key_function=limit_key,
        scope=limit_group,
        shared=True,  # one bucket per principal and group, not one per endpoint
        exempt_when=is_exempt,
        error_message=_refused_message,
    )
    limiter = Limiter(
        key_func=limit_key,
        default_limits=[default],
        storage_uri=storage_uri(settings.redis_url),
        # Short timeouts: an unreachable Redis costs one request half a second, then only the
        # periodic probe for its return (backing off to every 32 s) waits on it.
        storage_options=_STORAGE_OPTIONS,
        strategy="fixed-window",
        headers_enabled=True,
        header_name_mapping={HeaderNames.RETRY_AFTER: _RETRY_HEADER},
        enabled=settings.ratelimit_enabled,
        # Redis down: count in process memory rather than fail every request.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="taskexec-limits",
        request_identifier=lambda: request.endpoint or UNROUTED,
    )
    if settings.ratelimit_enabled:
        # Registered before the limiter's own after_request, so it runs after it.
        app.after_request(_retry_after)
    limiter.init_app(app)
    storage = limiter.storage if settings.ratelimit_enabled else None
    if isinstance(storage, SingleTripRedisStorage):
        # The count a request got from Redis must not answer for the next one on this thread.
        app.teardown_request(storage.forget)
    return limiter
