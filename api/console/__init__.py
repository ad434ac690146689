"""The operator's console at /console: server-rendered pages over the ledger (issue 18).

Flask and Jinja2 with a vendored htmx for the parts that refresh; no build step, no CDN.
`init_app` registers the session hook (before the rate limiter, so a console request counts
against its principal) and the blueprints; the pages call api/operations.py as the API does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Flask

from api.auth import public
from api.console import api_docs, session


def init_app(app: Flask) -> None:
    """Authenticate console requests from their cookie; call right after `load_principal`."""
    app.before_request(session.load_principal)


def register(app: Flask) -> None:
    """Register the console's pages and the API docs' assets."""
    # Imported for their routes, which they add to the blueprint.
    from api.console import definitions, login, queues, schedules, tasks, webhooks  # noqa: F401
    from api.console.blueprint import bp

    app.register_blueprint(bp)
    app.register_blueprint(api_docs.bp)
    # The console's own scripts and styles load before sign-in (the login page uses them).
    static = app.view_functions["console.static"]
    app.view_functions["console.static"] = public(functools.wraps(static)(_call(static)))


def _call(view: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function around a bound method, which can carry the `permission` mark."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper
