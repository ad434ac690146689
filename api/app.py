"""The Flask application factory."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import flask_smorest
from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from api import definitions, errors, health, tasks
from api.auth import TokenVerifier, load_principal, public
from api.limits import init_limiter
from api.services import Services
from config.settings import Settings
from shared.errors import PayloadTooLarge, ValidationError

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_nesting(raw: bytes) -> int:
    """Return the deepest bracket nesting of a JSON text without parsing it (no recursion)."""
    text = _STRINGS.sub(b'""', raw)
    depth = deepest = 0
    for byte in text:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the API; tests pass their own settings (flaskr's `create_app(test_config)`)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the seed's field order
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="taskexec",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
    )
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    app.extensions["taskexec"] = services or Services(settings)
    app.extensions["taskexec_tokens"] = TokenVerifier(settings)

    # Authenticate before the limiter runs, so limits are per principal.
    app.before_request(load_principal)
    app.before_request(lambda: check_body(settings))

    api = flask_smorest.Api(app, spec_kwargs=_spec_kwargs())
    for blueprint in (definitions.blp, tasks.blp):
        api.register_blueprint(blueprint)
    app.register_blueprint(health.blp)
    _mark_docs_public(app)
    errors.register(app)
    init_limiter(app, settings)
    app.after_request(_no_store)
    return app


def check_body(settings: Settings) -> None:
    """Refuse oversize bodies before reading them and deeply nested JSON before parsing it."""
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"the body is larger than {settings.max_body_bytes} bytes",
            {"limit": settings.max_body_bytes},
        )
    if request.method in ("POST", "PUT", "PATCH") and request.is_json:
        raw = request.get_data(cache=True)
        if json_nesting(raw) > settings.max_json_depth:
            raise ValidationError(
                f"the JSON body is nested deeper than {settings.max_json_depth} levels",
                {"limit": settings.max_json_depth},
            )


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


def _spec_kwargs() -> dict[str, object]:
    return {
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            }
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
    }
