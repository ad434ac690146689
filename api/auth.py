"""Authentication (X-API-Key or Bearer JWT) and per-endpoint permissions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import jwt
from flask import current_app, g, request

from api.services import services
from config.settings import Settings
from shared import store
from shared.credentials import Principal, key_id_of, key_matches
from shared.errors import AuthenticationError, PermissionDenied

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
PUBLIC = "public"


class TokenVerifier:
    """Verifies JWTs with the algorithm and key pinned by configuration, never the token's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithm = settings.jwt_algorithm
        self._jwks: jwt.PyJWKClient | None = None
        if settings.jwt_jwks_url:
            self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300)

    @property
    def enabled(self) -> bool:
        s = self.settings
        return bool(s.jwt_secret if self.algorithm == "HS256" else (s.jwt_public_key or self._jwks))

    def _key(self, token: str) -> Any:
        if self.algorithm == "HS256":
            return self.settings.jwt_secret
        if self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as exc:
                raise AuthenticationError("the token's signing key is unknown") from exc
        return self.settings.jwt_public_key

    def verify(self, token: str) -> Principal:
        """Return the token's principal, or raise AuthenticationError."""
        if not self.enabled:
            raise AuthenticationError("bearer tokens are not enabled on this server")
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=[self.algorithm],
                options={"require": ["exp", "sub"], "verify_aud": bool(s.jwt_audience)},
                issuer=s.jwt_issuer or None,
                audience=s.jwt_audience or None,
                leeway=s.jwt_leeway,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("the token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from exc
        permissions = claims.get("permissions")
        if permissions is None:
            permissions = str(claims.get("scope", "")).split()
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise AuthenticationError("invalid token: permissions must be a list of strings")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("invalid token: sub must be a non-empty string")
        return Principal(subject=subject, permissions=frozenset(permissions))


def authenticate_api_key(secret: str) -> Principal:
    """Look the key up by its id and compare hashes in constant time."""
    key_id = key_id_of(secret)
    if key_id is None:
        raise AuthenticationError("invalid API key")
    with services().db.connection() as conn:
        key = store.get_api_key(conn, key_id)
        if key is None or not key_matches(secret, key.key_hash) or key.revoked_at is not None:
            raise AuthenticationError("invalid API key")
        store.touch_api_key(conn, key_id)
    return Principal(
        subject=key.owner,
        permissions=frozenset(key.permissions),
        key_id=key.id,
        rate_limit=key.rate_limit,
    )


def load_principal() -> None:
    """Authenticate the request (before rate limiting); keep the error for the view to raise."""
    g.principal = None
    g.auth_error = None
    try:
        api_key = request.headers.get("X-API-Key")
        authorization = request.headers.get("Authorization", "")
        if api_key:
            g.principal = authenticate_api_key(api_key.strip())
        elif authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("use 'Authorization: Bearer <token>' or X-API-Key")
            g.principal = current_app.extensions["taskexec_tokens"].verify(token.strip())
        else:
            g.auth_error = AuthenticationError("authentication required")
    except AuthenticationError as exc:
        g.auth_error = exc


def current_principal() -> Principal:
    """Return the caller, or raise the reason there is none."""
    principal = g.get("principal")
    if principal is None:
        raise g.get("auth_error") or AuthenticationError("authentication required")
    return principal


def requires(permission: str) -> Callable[[F], F]:
    """Make a view require `permission` (401 without credentials, 403 without the right)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if not principal.can(permission):
                raise PermissionDenied(
                    f"this operation needs the {permission} permission",
                    {"required": permission},
                )
            return view(*args, **kwargs)

        wrapper.permission = permission  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def public(view: F) -> F:
    """Mark a view as needing no credentials (health, API docs)."""
    view.permission = PUBLIC  # type: ignore[attr-defined]
    return view
