"""Credentials: permissions, principals, API key material and JWT minting."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import jwt
import psycopg2.extensions
import redis

from shared import store

PERMISSIONS: tuple[str, ...] = (
    "tasks:execute",
    "tasks:read",
    "tasks:cancel",
    "tasks:list",
    "tasks:complete",
    "tasks:definitions:list",
    "tasks:definitions:read",
    "tasks:admin",
    "schedules:read",
    "schedules:write",
    "webhooks:read",
    "webhooks:write",
)
WILDCARD = "*"
KEY_PREFIX = "tes_"
#: Redis channel on which a revoked key's id is announced to every API process (api/key_cache.py).
REVOKED_CHANNEL = "taskexec:api-keys:revoked"
_KEY = re.compile(r"^tes_([a-z0-9]{12})_([A-Za-z0-9_-]{32,})$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner their tasks belong to, and what they may do."""

    subject: str  # tenancy: tasks belong to this
    permissions: frozenset[str] = field(default_factory=frozenset)
    key_id: str | None = None  # set for API keys
    rate_limit: str | None = None  # a per-key override of the default limit
    max_running: int | None = None  # an API key's maxRunning (JWT: the configured default)

    def can(self, permission: str) -> bool:
        return WILDCARD in self.permissions or permission in self.permissions

    @property
    def is_admin(self) -> bool:
        return self.can("tasks:admin")

    @property
    def limit_key(self) -> str:
        """The rate-limit bucket: one per API key, or per JWT subject."""
        return f"key:{self.key_id}" if self.key_id else f"sub:{self.subject}"


def check_permissions(permissions: Iterable[str]) -> list[str]:
    """Return the permissions that are not known (empty when all are)."""
    return [p for p in permissions if p != WILDCARD and p not in PERMISSIONS]


@dataclass(frozen=True)
class NewKey:
    """A freshly generated API key; `secret` is shown once and never stored."""

    key_id: str
    secret: str
    key_hash: str


def generate_key() -> NewKey:
    """Make a key `tes_<id>_<secret>` with 192 random bits in the secret."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    key_id = "".join(secrets.choice(alphabet) for _ in range(12))
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
    return NewKey(key_id=key_id, secret=secret, key_hash=hash_key(secret))


def issue_key(
    conn: psycopg2.extensions.connection,
    *,
    name: str,
    owner: str,
    permissions: Iterable[str],
    rate_limit: str | None,
    max_running: int | None = None,
) -> tuple[store.ApiKey, str]:
    """Generate a key and store only its hash; return the row and the secret, shown once."""
    new = generate_key()
    key = store.insert_api_key(
        conn,
        key_id=new.key_id,
        name=name,
        owner=owner,
        permissions=list(permissions),
        key_hash=new.key_hash,
        rate_limit=rate_limit,
        max_running=max_running,
    )
    return key, new.secret


def announce_revocation(redis_url: str, key_id: str) -> bool:
    """Tell every API process to forget `key_id` now; call it after the revocation committed.

    Best effort: without it (Redis down) the processes still refuse the key within a second,
    when their cached copy expires. Says whether the announcement was sent.
    """
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.publish(REVOKED_CHANNEL, key_id)
    except redis.RedisError:
        return False
    finally:
        client.close()
    return True


def hash_key(secret: str) -> str:
    """Hash a key for storage; SHA-256 suffices for 192-bit random secrets (no dictionary)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """Return the public id embedded in a key, or None if it is not one of ours."""
    match = _KEY.fullmatch(secret)
    return match.group(1) if match else None


def key_matches(secret: str, key_hash: str) -> bool:
    """Compare a presented key with a stored hash in constant time."""
    return hmac.compare_digest(hash_key(secret), key_hash)


def mint_token(
    secret: str,
    subject: str,
    permissions: Iterable[str],
    *,
    ttl: int = 3600,
    issuer: str = "",
    audience: str = "",
    algorithm: str = "HS256",
) -> str:
    """Sign a JWT carrying `permissions`, valid for `ttl` seconds."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "permissions": sorted(set(permissions)),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)
