"""The Flask application factory."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from api import (
    console,
    definitions,
    errors,
    health,
    metrics,
    openapi,
    queues,
    replay,
    task_apis,
    task_logs,
    tasks,
)
from api.auth import TokenVerifier, load_principal, public
from api.key_cache import KeyCache
from api.limits import init_limiter
from api.parsing import JSONProvider, check_body
from api.schedules import blp as schedules_blp
from api.services import Services
from api.webhooks import blp as webhooks_blp
from config.settings import Settings


class _App(Flask):
    """Flask, asking once per function whether a view or hook is a coroutine function.

    Flask asks `inspect.iscoroutinefunction` of every hook and view on every request (14 times
    per submit); the answer never changes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except KeyError:
            sync = super().ensure_sync(func)
            if len(self._sync) < 4096:  # views and hooks are few; never grow without bound
                self._sync[func] = sync
            return sync
        except TypeError:  # unhashable
            return super().ensure_sync(func)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the API; tests pass their own settings (flaskr's `create_app(test_config)`)."""
    settings = settings or Settings.from_env()
    app = _App(__name__)
    app.json = JSONProvider(app)  # NaN, Infinity and overflowing numbers are a 400
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the seed's field order
    app.config.update(
        # One byte over the limit, so a chunked body (no Content-Length) that is too large
        # reads as too long in check_body instead of being silently cut at the limit.
        MAX_CONTENT_LENGTH=settings.max_body_bytes + 1,
        API_TITLE="taskexec",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Served from the installed swagger-ui-bundle: the docs render without internet access.
        OPENAPI_SWAGGER_UI_URL=console.api_docs.URL,
    )
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    svc = services or Services(settings)
    svc.tokens = TokenVerifier(settings)
    svc.keys = KeyCache(settings.redis_url)
    app.extensions["taskexec"] = svc

    # Authenticate before the limiter runs, so limits are per principal; limit before the body
    # checks, so oversize or too-deep requests count and their 413/400 carry the headers.
    metrics.init_app(app)  # first: its timer covers authentication and limits too
    app.before_request(load_principal)
    console.init_app(app)  # a console page's principal comes from its session cookie
    init_limiter(app, settings)
    app.before_request(lambda: check_body(settings))

    api = openapi.Api(app, spec_kwargs=openapi.spec_kwargs())
    openapi.register(api)
    for blueprint in (definitions.blp, tasks.blp, replay.blp, task_logs.blp, task_apis.blp):
        api.register_blueprint(blueprint)
    api.register_blueprint(schedules_blp)
    api.register_blueprint(webhooks_blp)
    api.register_blueprint(queues.blp)
    app.register_blueprint(health.blp)
    console.register(app)
    _mark_docs_public(app)
    errors.register(app)
    app.after_request(_no_store)
    return app


def _no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    if response.status_code != 429 and response.status_code != 503:
        # flask-limiter adds Retry-After to every response; it only means something on a refusal.
        response.headers.pop("Retry-After", None)
    return response


def _mark_docs_public(app: Flask) -> None:
    for endpoint, view in list(app.view_functions.items()):
        if endpoint.startswith("api-docs.") or endpoint == "static":
            app.view_functions[endpoint] = public(_plain(view))


def _plain(view: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a bound method in a function, which can carry the `permission` mark."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper
