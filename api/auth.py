"""Authentication (X-API-Key or Bearer JWT) and per-endpoint permissions."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import g, request

from api.services import services
from config.settings import ConfigurationError, Settings
from shared import store
from shared.credentials import Principal, hash_key, key_id_of, key_matches
from shared.errors import AuthenticationError, PermissionDenied, ServiceUnavailable

log = logging.getLogger(__name__)
TOUCH_EVERY = timedelta(seconds=60)
F = TypeVar("F", bound=Callable[..., Any])
PUBLIC = "public"
MAX_SUBJECT = 200  # the subject becomes the owner of tasks and a rate-limit key
JWKS_LIFESPAN = 300  # seconds a fetched JWKS is trusted before it is fetched again
JWKS_REFRESH_COOLDOWN = 30  # seconds between refetches caused by an unknown kid
# Compared against when a key id is unknown, so a miss costs what a hit costs.
_NO_SUCH_KEY = hash_key("tes_000000000000_" + "0" * 32)


class TokenVerifier:
    """Verifies JWTs with the algorithm and key pinned by configuration, never the token's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithm = settings.jwt_algorithm
        asymmetric = self.algorithm != "HS256"
        self._public_key = (
            load_public_key(settings) if asymmetric and settings.jwt_public_key else None
        )
        self._jwks: jwt.PyJWKClient | None = None
        self._jwks_lock = threading.Lock()
        self._jwks_refreshed = -math.inf
        if asymmetric and settings.jwt_jwks_url:
            self._jwks = jwt.PyJWKClient(
                settings.jwt_jwks_url, cache_jwk_set=True, lifespan=JWKS_LIFESPAN, timeout=5
            )

    @property
    def enabled(self) -> bool:
        """Say whether bearer tokens can be verified with this configuration."""
        if self.algorithm == "HS256":
            return bool(self.settings.jwt_secret)
        return self._jwks is not None or self._public_key is not None

    def _key(self, token: str) -> Any:
        if self.algorithm == "HS256":
            return self.settings.jwt_secret
        if self._jwks is not None:
            return self._jwks_key(token)
        return self._public_key

    def _jwks_key(self, token: str) -> Any:
        """The JWKS key named by the token's `kid` (of the pinned algorithm's key type)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {_reason(exc)}") from exc
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("invalid token: the header has no kid")
        assert self._jwks is not None
        try:
            key = self._find_key(self._jwks.get_signing_keys(), kid)
        except jwt.PyJWTError as exc:
            raise ServiceUnavailable("the token signing keys cannot be fetched") from exc
        if key is None and self._may_refresh():
            # A new key may have been published; refetch, but at most once per cooldown so
            # tokens with made-up kids cannot make us hammer the identity provider.
            try:
                key = self._find_key(self._jwks.get_signing_keys(refresh=True), kid)
            except jwt.PyJWTError:
                log.warning("refreshing the JWKS from %s failed", self.settings.jwt_jwks_url)
        if key is None:
            raise AuthenticationError("invalid token: its signing key (kid) is unknown")
        return key

    def _find_key(self, keys: list[jwt.PyJWK], kid: str) -> Any:
        for jwk in keys:
            if jwk.key_id == kid and _fits(self.algorithm, jwk.key):
                return jwk.key
        return None

    def _may_refresh(self) -> bool:
        with self._jwks_lock:
            now = time.monotonic()
            if now - self._jwks_refreshed < JWKS_REFRESH_COOLDOWN:
                return False
            self._jwks_refreshed = now
            return True

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
                # The time claims are checked below, once their types are known to be right.
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": bool(s.jwt_audience),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
                issuer=s.jwt_issuer or None,
                audience=s.jwt_audience or None,
                leeway=s.jwt_leeway,
            )
        except jwt.PyJWTError as exc:  # InvalidTokenError, and InvalidKeyError for odd keys
            # PyJWT's own words name its internals; say which part failed, in ours.
            raise AuthenticationError(f"invalid token: {_reason(exc)}") from exc
        _check_times(claims, s.jwt_max_lifetime, s.jwt_leeway)
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT:
            raise AuthenticationError(f"invalid token: sub must be 1 to {MAX_SUBJECT} characters")
        if not subject.isprintable():
            # The subject owns rows in Postgres, which cannot store NUL, and lands in logs,
            # where control characters forge lines.
            raise AuthenticationError("invalid token: sub must hold printable characters only")
        return Principal(
            subject=subject,
            permissions=frozenset(token_permissions(claims)),
            max_running=s.max_running_per_principal or None,  # 0: unlimited
        )


def _reason(exc: jwt.PyJWTError) -> str:
    """Name what was wrong with a token without quoting the library."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the {exc.claim} claim is required"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the audience (aud) is not accepted"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the issuer (iss) is not accepted"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "the signing algorithm is not accepted"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the signature does not verify"
    if isinstance(exc, jwt.DecodeError):
        return "the token is malformed or a claim has the wrong type"
    return "the token cannot be verified"


def _check_times(claims: dict[str, Any], max_lifetime: int, leeway: int) -> None:
    """Check exp, nbf and iat as numbers, and refuse lifetimes over `max_lifetime` seconds.

    PyJWT converts with int(), so it accepts "9999999999" and true; RFC 7519 says NumericDate.
    A stolen token is only as harmful as it is long-lived, so a lifetime over the limit is
    refused even when an identity provider mints it.
    """
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise AuthenticationError(f"invalid token: {name} must be a number of seconds")
    now = time.time()
    if claims["exp"] <= now - leeway:
        raise AuthenticationError("the token has expired")
    for name in ("nbf", "iat"):
        if claims.get(name, now) > now + leeway:
            raise AuthenticationError(f"invalid token: it is not valid yet ({name})")
    start = min(claims.get("iat", now), now)
    if max_lifetime and claims["exp"] - start > max_lifetime + leeway:
        raise AuthenticationError(
            f"invalid token: its lifetime exceeds the {max_lifetime} s this server accepts"
        )


def token_permissions(claims: dict[str, Any]) -> list[str]:
    """Read permissions from a `permissions` list, else the standard space-separated `scope`."""
    permissions = claims.get("permissions")
    if permissions is None:
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise AuthenticationError("invalid token: scope must be a space-separated string")
        permissions = scope.split()
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise AuthenticationError("invalid token: permissions must be a list of strings")
    return permissions


def load_public_key(settings: Settings) -> Any:
    """Load TASKEXEC_JWT_PUBLIC_KEY (PEM text, or a path to a PEM file) for the algorithm."""
    raw = settings.jwt_public_key.strip()
    problem = "TASKEXEC_JWT_PUBLIC_KEY"
    if "-----BEGIN" not in raw:
        try:
            raw = Path(raw).read_text()
        except OSError as exc:
            raise ConfigurationError([f"{problem}: neither PEM text nor a readable file"]) from exc
    try:
        # .env files often carry a PEM on one line with literal \n
        key = serialization.load_pem_public_key(raw.replace("\\n", "\n").encode())
    except ValueError as exc:
        raise ConfigurationError([f"{problem}: not a PEM public key ({exc})"]) from exc
    if not _fits(settings.jwt_algorithm, key):
        raise ConfigurationError(
            [f"{problem}: not a key for TASKEXEC_JWT_ALGORITHM={settings.jwt_algorithm}"]
        )
    return key


def _fits(algorithm: str, key: Any) -> bool:
    """Say whether `key` is the kind the pinned algorithm verifies with."""
    if algorithm == "RS256":
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return False


def authenticate_api_key(secret: str) -> Principal:
    """Look the key up by its id and compare hashes in constant time."""
    key_id = key_id_of(secret)
    if key_id is None:
        raise AuthenticationError("invalid API key")
    svc = services()
    # Read at most every 0.9 s per process, and forgotten at once when revoked (api/key_cache.py).
    key = svc.keys.get(key_id, lambda: _read_key(key_id))
    matches = key_matches(secret, key.key_hash if key is not None else _NO_SUCH_KEY)
    if key is None or not matches or key.revoked_at is not None:
        raise AuthenticationError("invalid API key")
    if svc.keys.touch_due(key, TOUCH_EVERY):
        # Record the use at most once a minute: the hot path stays write-free.
        with svc.db.connection(autocommit=True) as conn:
            store.touch_api_key(conn, key_id, int(TOUCH_EVERY.total_seconds()))
    return Principal(
        subject=key.owner,
        permissions=frozenset(key.permissions),
        key_id=key.id,
        rate_limit=key.rate_limit,
        max_running=key.max_running,
    )


def _read_key(key_id: str) -> store.ApiKey | None:
    """Read a key from Postgres (autocommit: one round trip, no transaction)."""
    with services().db.connection(autocommit=True) as conn:
        return store.get_api_key(conn, key_id)


def load_principal() -> None:
    """Authenticate the request (before rate limiting); keep the error for the view to raise.

    Also a 503 (database or JWKS unreachable) is kept, not raised: public views such as the
    health probes must answer whatever credentials a request carries.
    """
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
            g.principal = services().tokens.verify(token.strip())
        else:
            g.auth_error = AuthenticationError("authentication required")
    except (AuthenticationError, ServiceUnavailable) as exc:
        g.auth_error = exc


def current_principal() -> Principal:
    """Return the caller, or raise the reason there is none."""
    principal = g.get("principal")
    if principal is None:
        raise g.get("auth_error") or AuthenticationError("authentication required")
    return principal


def requires(permission: str, when: Callable[[], bool] | None = None) -> Callable[[F], F]:
    """Make a view require `permission` (401 without credentials, 403 without the right).

    With `when`, only requests for which it is true need the permission (one URL serving two
    reads); the outermost `requires` is the permission the view declares.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if (when is None or when()) and not principal.can(permission):
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
