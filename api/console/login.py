"""Signing in to the console (an API key or a JWT, pasted) and out."""

from __future__ import annotations

from flask import current_app, make_response, redirect, request, url_for
from werkzeug.wrappers import Response

from api.auth import public
from api.console import session
from api.console.blueprint import SECTIONS, bp, render, safe_next
from api.services import services
from shared.credentials import Principal
from shared.errors import AuthenticationError, ServiceUnavailable


def _with_session(body: str, status: int, fresh: session.Session) -> Response:
    response = make_response(body, status)
    session.write(response, services().settings, fresh)
    return response


@bp.route("/login", methods=["GET"])
@public
def login() -> Response:
    """The sign-in form; it starts a session that holds only the form's CSRF token."""
    current = session.current() or session.new_session()
    body, status = render("login.html", csrf_token=current.csrf, next=safe_next(_next()))
    return _with_session(body, status, session.Session(csrf=current.csrf))


def _next() -> str | None:
    return request.args.get("next") or request.form.get("next")


@bp.route("/login", methods=["POST"])
@public
def login_submit() -> Response:
    """Check the pasted credential as the API would; on success, a new session holds it."""
    credential = request.form.get("apiKey", "")
    target = safe_next(_next())
    try:
        principal = session.authenticate(credential)
    except (AuthenticationError, ServiceUnavailable) as exc:
        status = 503 if isinstance(exc, ServiceUnavailable) else 401
        current = session.current() or session.new_session()
        body, status = render(
            "login.html", status, csrf_token=current.csrf, next=target, problem=exc.message
        )
        return make_response(body, status)
    if not _next():
        target = landing(principal)
    # A new CSRF token at sign-in: a token planted before it is worth nothing after.
    response = redirect(target, code=303)
    session.write(response, services().settings, session.new_session(credential.strip()))
    return response


def landing(principal: Principal) -> str:
    """The first section the principal may see (the tasks, for most)."""
    for endpoint, _label, permission in SECTIONS:
        if principal.can(permission) and endpoint in current_app.view_functions:
            return url_for(endpoint)
    return url_for("console.logout")


@bp.route("/logout", methods=["GET"])
@public
def logout() -> tuple[str, int]:
    """A page with the sign-out button (signing out is a POST carrying the CSRF token)."""
    return render("logout.html")


@bp.route("/logout", methods=["POST"])
@public
def logout_submit() -> Response:
    """End the session: the cookie is removed and the browser goes to the sign-in form."""
    response = redirect(url_for("console.login"), code=303)
    session.clear(response, services().settings)
    return response
