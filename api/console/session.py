"""The console's session: an encrypted, expiring cookie holding the credential and a CSRF token.

The cookie is a Fernet token (AES-CBC and HMAC-SHA256, with its issue time), so it is signed,
expires after TASKEXEC_CONSOLE_SESSION_SECONDS, and does not show the API key or JWT it holds.
The credential is authenticated again on every request, exactly as the API does, so a revoked
key or an expired token ends the session at once and permissions are the API's own.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from dataclasses import dataclass

import redis
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app, g, request
from werkzeug.wrappers import Response

from api.auth import authenticate_api_key
from api.services import services
from config.settings import Settings
from shared.credentials import KEY_PREFIX, Principal
from shared.errors import AuthenticationError, PermissionDenied, ServiceUnavailable

COOKIE = "taskexec_console"
PATH = "/console"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
#: Where the shared secret lives when TASKEXEC_CONSOLE_SECRET is unset.
REDIS_SECRET_KEY = "taskexec:console:secret"
_secret_lock = threading.Lock()
_EXTENSION = "taskexec_console_fernet"


@dataclass(frozen=True)
class Session:
    """What the cookie holds: a CSRF token, and once signed in, the credential."""

    csrf: str
    credential: str | None = None


def _fernet(settings: Settings) -> Fernet:
    """The app's cookie cipher, made once (the Redis secret is read on first use)."""
    cached = current_app.extensions.get(_EXTENSION)
    if isinstance(cached, Fernet):
        return cached
    with _secret_lock:
        secret = settings.console_secret or _shared_secret(settings.redis_url)
        # A derived key: the configured secret may be any length and is never used directly.
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"taskexec console session"
        ).derive(secret.encode())
        fernet = Fernet(base64.urlsafe_b64encode(key))
        current_app.extensions[_EXTENSION] = fernet
        return fernet


def _shared_secret(redis_url: str) -> str:
    """A random secret every API process agrees on: the first to ask stores it in Redis."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.set(REDIS_SECRET_KEY, secrets.token_urlsafe(32), nx=True)
        value = client.get(REDIS_SECRET_KEY)
    except redis.RedisError as exc:
        raise ServiceUnavailable("the console's session secret cannot be read (Redis)") from exc
    finally:
        client.close()
    if value is None:
        raise ServiceUnavailable("the console's session secret vanished from Redis")
    return value.decode() if isinstance(value, bytes) else str(value)


def read(settings: Settings) -> Session | None:
    """The request's session, or None when there is none or it is forged or expired."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(
            _fernet(settings).decrypt(raw.encode(), ttl=settings.console_session_seconds)
        )
        return Session(csrf=str(data["csrf"]), credential=data.get("credential"))
    except (InvalidToken, ValueError, KeyError, TypeError):
        return None


def write(response: Response, settings: Settings, session: Session) -> None:
    """Set the cookie: HttpOnly, SameSite=Strict, Secure over https, expiring with the session."""
    data = {"csrf": session.csrf, "credential": session.credential}
    token = _fernet(settings).encrypt(json.dumps(data).encode()).decode()
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.console_session_seconds,
        path=PATH,
        secure=is_https(settings),
        httponly=True,
        samesite="Strict",
    )


def clear(response: Response, settings: Settings) -> None:
    """Remove the cookie (sign out)."""
    response.delete_cookie(
        COOKIE, path=PATH, secure=is_https(settings), httponly=True, samesite="Strict"
    )


def is_https(settings: Settings) -> bool:
    """Whether the browser reached us over https (directly, or through a trusted proxy)."""
    if request.is_secure or settings.public_url.startswith("https://"):
        return True
    if settings.trusted_proxies:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return forwarded == "https"
    return False


def new_session(credential: str | None = None) -> Session:
    """A session with a fresh CSRF token (a new one at each sign-in: no fixation)."""
    return Session(csrf=secrets.token_urlsafe(32), credential=credential)


def authenticate(credential: str) -> Principal:
    """Authenticate an API key or a JWT as the API would; AuthenticationError otherwise."""
    credential = credential.strip()
    if not credential:
        raise AuthenticationError("paste an API key or a token")
    if credential.startswith(KEY_PREFIX):
        return authenticate_api_key(credential)
    if credential.lower().startswith("bearer "):
        credential = credential[7:].strip()
    return services().tokens.verify(credential)


def load_principal() -> None:
    """Before the limiter counts a console request: its principal comes from the cookie.

    The API's own `load_principal` ran first. A request that carried X-API-Key or a bearer
    token keeps that result (a script may read the pages as the API; no browser sends those
    headers across sites, so such requests need no CSRF token). Otherwise the console's
    session supplies the principal, so `requires(...)` and the rate limits work as for the API.
    """
    if not request.path.startswith(PATH + "/") and request.path != PATH:
        return
    g.console_session = None
    g.console_cookie_auth = False
    if has_api_credentials():
        return
    settings = services().settings
    try:
        session = read(settings)
    except ServiceUnavailable as exc:
        g.auth_error = exc
        return
    g.console_session = session
    if session is None or session.credential is None:
        g.auth_error = AuthenticationError("sign in to the console")
        return
    g.console_cookie_auth = True
    try:
        g.principal = authenticate(session.credential)
        g.auth_error = None
    except (AuthenticationError, ServiceUnavailable) as exc:
        g.principal = None
        g.auth_error = exc


def has_api_credentials() -> bool:
    """Whether the request authenticates as API clients do (a header, not the cookie)."""
    return bool(request.headers.get("X-API-Key") or request.headers.get("Authorization"))


def current() -> Session | None:
    """The session read for this request (None: none, forged or expired)."""
    return g.get("console_session")


def check_csrf() -> None:
    """Refuse a state-changing request whose CSRF token is missing or not the session's."""
    session = current()
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if session is None or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise PermissionDenied(
            "the form's CSRF token is missing or stale: reload the page and try again",
            {"field": CSRF_FIELD},
        )
