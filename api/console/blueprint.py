"""The console's blueprint: security headers, CSRF on every POST, HTML error pages, helpers."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from api.console import session
from api.errors import handle_domain_error, status_for
from api.pagination import MAX_PAGE
from shared.credentials import Principal
from shared.errors import AuthenticationError, TaskexecError
from shared.status import Priority
from shared.task_document import rfc3339

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: Only our own scripts and styles run: an injected <script> or inline handler is refused
#: even if escaping ever failed somewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)

#: The sections of the navigation and the permission each needs.
SECTIONS = (
    ("console.tasks", "Tasks", "tasks:list"),
    ("console.definitions", "Definitions", "tasks:definitions:list"),
    ("console.queues", "Queues", "tasks:list"),
    ("console.schedules", "Schedules", "schedules:read"),
    ("console.webhooks", "Webhooks", "webhooks:read"),
)


#: Views that change state without a principal: they check the CSRF token of the session.
_ANONYMOUS_FORMS = frozenset({"console.login_submit", "console.logout_submit"})


@bp.before_request
def _csrf() -> None:
    """Every state-changing request from the browser session carries the session's token.

    Header-authenticated requests (scripts) need none, as for the API; a request with no
    principal at all goes on to its view, whose `requires` answers 401.
    """
    if request.method in ("GET", "HEAD", "OPTIONS") or session.has_api_credentials():
        return
    if request.endpoint == "console.logout_submit" and session.current() is None:
        return  # no session to end, nothing to protect: signing out just clears the cookie
    if g.get("principal") is not None or request.endpoint in _ANONYMOUS_FORMS:
        session.check_csrf()


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_filter("rfc3339")
def _rfc3339(value: Any) -> str | None:
    return rfc3339(value) if value is not None and not isinstance(value, str) else value


@bp.app_template_filter("pretty_json")
def _pretty_json(value: Any, indent: int | None = 2) -> str:
    """JSON for reading (escaped by the template like any text, unlike `tojson`'s \\u003c)."""
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=False)


@bp.app_template_filter("priority")
def _priority(rank: int) -> str:
    return Priority.from_rank(rank).value


@bp.context_processor
def _context() -> dict[str, Any]:
    principal: Principal | None = g.get("principal")
    current = session.current()
    sections = [
        (endpoint, label)
        for endpoint, label, permission in SECTIONS
        if principal is not None
        and principal.can(permission)
        and endpoint in current_app.view_functions  # a feature not built has no page
    ]
    return {
        "principal": principal,
        "csrf_token": current.csrf if current else "",
        "sections": sections,
    }


def render(template: str, code: int = 200, **context: Any) -> tuple[str, int]:
    """Render a console page with the HTTP status `code`."""
    return render_template(f"console/{template}", **context), code


def error_page(error: TaskexecError) -> Response | tuple[str, int]:
    """Show a domain error as a page; an unauthenticated GET goes to the sign-in form."""
    status = status_for(error)
    if isinstance(error, AuthenticationError) and not _wants_html():
        return handle_domain_error(error)  # a script: the API's 401 envelope
    if isinstance(error, AuthenticationError) and request.method == "GET":
        target = url_for("console.login", next=_local_path())
        if request.headers.get("HX-Request"):
            # A polled fragment: htmx follows HX-Redirect with a full page load.
            response = Response("", 200)
            response.headers["HX-Redirect"] = target
            return response
        return redirect(target)  # type: ignore[return-value]
    return render("error.html", status, status=status, error=error)


def _wants_html() -> bool:
    return request.accept_mimetypes.accept_html or bool(request.headers.get("HX-Request"))


def _http_error(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    problem = TaskexecError(error.description or error.name)
    return render("error.html", status, status=status, error=problem)


def _local_path() -> str:
    """The current path and query, for returning after sign-in (never another origin)."""
    query = request.query_string.decode()
    return request.path + ("?" + query if query else "")


def safe_next(target: str | None) -> str:
    """A post-sign-in target: a path inside the console, else the task list."""
    if target and target.startswith(session.PATH + "/") and not target.startswith("//"):
        return target
    return url_for("console.tasks")


def page_number() -> int:
    """The `page` query parameter of a list: 1 when absent or not a number, at most MAX_PAGE
    (as the API's lists; a larger one made an offset past Postgres' bigint: a 500)."""
    try:
        return min(max(1, int(request.args.get("page", "1"))), MAX_PAGE)
    except ValueError:
        return 1


def query_string(params: dict[str, Any]) -> str:
    """Encode the non-empty parameters of a link."""
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


bp.register_error_handler(TaskexecError, error_page)
bp.register_error_handler(HTTPException, _http_error)
