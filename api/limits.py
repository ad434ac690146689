"""Per-principal rate limits kept in Redis (flask-limiter), with X-RateLimit-* headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from flask_limiter import Limiter

from config.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
BULK = "bulk"


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


def _settings() -> Settings:
    return current_app.extensions["taskexec"].settings  # type: ignore[no-any-return]


def default_limit() -> str:
    principal = g.get("principal")
    if principal is not None and principal.rate_limit:
        return str(principal.rate_limit)
    return _settings().ratelimit_default


def bulk_limit_value() -> str:
    return _settings().ratelimit_bulk


def init_limiter(app: Flask, settings: Settings) -> Limiter:
    """Attach a limiter to `app` and apply the bulk limit and the health exemptions."""
    limiter = Limiter(
        key_func=limit_key,
        default_limits=[default_limit],
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        strategy="fixed-window",
        headers_enabled=True,
        enabled=settings.ratelimit_enabled,
        # Redis down: count in process memory rather than fail every request.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="taskexec-limits",
    )
    limiter.init_app(app)
    for view in app.view_functions.values():
        if getattr(view, "permission", None) == "public":
            limiter.exempt(view)
        elif getattr(view, "rate_limit_group", None) == BULK:
            limiter.limit(bulk_limit_value, override_defaults=True)(view)
    return limiter
