"""Settings: the one place that reads the environment, validated all at once."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$", re.I)


class ConfigurationError(ValueError):
    """One or more environment variables are missing or invalid; the message names each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def _int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def parse_rate(raw: str) -> str:
    """Check a flask-limiter rate such as 100/minute; return it stripped."""
    if not _RATE.match(raw):
        raise ValueError("expected a rate such as 100/minute")
    return raw.strip()


def _postgres_url(raw: str) -> str:
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ValueError("expected a postgresql:// URL")
    return raw


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis:// URL")
    return raw


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return value

    return parse


def _text(raw: str) -> str:
    return raw


# Variables whose values may carry credentials.
_SENSITIVE = frozenset(
    {
        "DATABASE_URL",
        "REDIS_URL",
        "TASKEXEC_JWT_SECRET",
        "TASKEXEC_JWT_PUBLIC_KEY",
        "TASKEXEC_METRICS_TOKEN",
        "TASKEXEC_FLOWER_BASIC_AUTH",
    }
)

# attribute -> (environment variable, parser, default; None means required)
_SPEC: dict[str, tuple[str, Callable[[str], Any], str | None]] = {
    "database_url": ("DATABASE_URL", _postgres_url, None),
    "redis_url": ("REDIS_URL", _redis_url, None),
    "jwt_algorithm": ("TASKEXEC_JWT_ALGORITHM", _choice("HS256", "RS256", "ES256"), "HS256"),
    "jwt_secret": ("TASKEXEC_JWT_SECRET", _text, ""),
    "jwt_public_key": ("TASKEXEC_JWT_PUBLIC_KEY", _text, ""),
    "jwt_jwks_url": ("TASKEXEC_JWT_JWKS_URL", _text, ""),
    "jwt_issuer": ("TASKEXEC_JWT_ISSUER", _text, ""),
    "jwt_audience": ("TASKEXEC_JWT_AUDIENCE", _text, ""),
    "jwt_leeway": ("TASKEXEC_JWT_LEEWAY", _non_negative_int, "10"),
    "ratelimit_enabled": ("TASKEXEC_RATELIMIT_ENABLED", _bool, "true"),
    "ratelimit_default": ("TASKEXEC_RATELIMIT_DEFAULT", parse_rate, "100/minute"),
    "ratelimit_bulk": ("TASKEXEC_RATELIMIT_BULK", parse_rate, "20/minute"),
    "trusted_proxies": ("TASKEXEC_TRUSTED_PROXIES", _non_negative_int, "0"),
    "max_body_bytes": ("TASKEXEC_MAX_BODY_BYTES", _positive_int, str(1024 * 1024)),
    "max_json_depth": ("TASKEXEC_MAX_JSON_DEPTH", _positive_int, "32"),
    "bulk_max_tasks": ("TASKEXEC_BULK_MAX_TASKS", _positive_int, "100"),
    "idempotency_ttl": ("TASKEXEC_IDEMPOTENCY_TTL", _positive_int, "86400"),
    "list_exact_count_max": ("TASKEXEC_LIST_EXACT_COUNT_MAX", _non_negative_int, "10000"),
    "db_pool_max": ("TASKEXEC_DB_POOL_MAX", _positive_int, "10"),
    "db_connect_timeout": ("TASKEXEC_DB_CONNECT_TIMEOUT", _positive_int, "5"),
    "definition_cache_seconds": ("TASKEXEC_DEFINITION_CACHE_SECONDS", _non_negative_int, "5"),
    "lease_seconds": ("TASKEXEC_LEASE_SECONDS", _positive_int, "30"),
    "heartbeat_seconds": ("TASKEXEC_HEARTBEAT_SECONDS", _positive_float, "2"),
    "sweep_interval": ("TASKEXEC_SWEEP_INTERVAL", _positive_float, "1"),
    "republish_after": ("TASKEXEC_REPUBLISH_AFTER", _positive_int, "60"),
    "retry_countdown_max": ("TASKEXEC_RETRY_COUNTDOWN_MAX", _non_negative_int, "300"),
    "hard_timeout_grace": ("TASKEXEC_HARD_TIMEOUT_GRACE", _positive_float, "5"),
    "cancel_grace": ("TASKEXEC_CANCEL_GRACE", _positive_float, "10"),
    "max_worker_lost": ("TASKEXEC_MAX_WORKER_LOST", _positive_int, "3"),
    "definition_modules": ("TASKEXEC_DEFINITION_MODULES", _text, ""),
    # Above the longest attempt the API accepts (a week) plus its hard-limit grace.
    "visibility_timeout": ("TASKEXEC_VISIBILITY_TIMEOUT", _positive_int, "691200"),
    "worker_events": ("TASKEXEC_WORKER_EVENTS", _bool, "true"),
    "worker_concurrency": ("TASKEXEC_WORKER_CONCURRENCY", _non_negative_int, "0"),
    "log_format": ("TASKEXEC_LOG_FORMAT", _choice("text", "json"), "text"),
    "log_level": ("TASKEXEC_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    "metrics_token": ("TASKEXEC_METRICS_TOKEN", _text, ""),
    "metrics_port": ("TASKEXEC_METRICS_PORT", _non_negative_int, "0"),
    "metrics_dir": ("PROMETHEUS_MULTIPROC_DIR", _text, ""),
    "flower_basic_auth": ("TASKEXEC_FLOWER_BASIC_AUTH", _text, ""),
}


@dataclass(frozen=True)
class Settings:
    """Every knob of the service, typed; build with `from_env` or directly in tests."""

    database_url: str
    redis_url: str
    jwt_algorithm: str = "HS256"
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway: int = 10
    ratelimit_enabled: bool = True
    ratelimit_default: str = "100/minute"
    ratelimit_bulk: str = "20/minute"
    trusted_proxies: int = 0
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    bulk_max_tasks: int = 100
    idempotency_ttl: int = 86400
    list_exact_count_max: int = 10_000  # larger list totals are estimates; 0: always exact
    db_pool_max: int = 10
    db_connect_timeout: int = 5
    definition_cache_seconds: int = 5
    lease_seconds: int = 30
    heartbeat_seconds: float = 2.0
    sweep_interval: float = 1.0
    republish_after: int = 60
    retry_countdown_max: int = 300
    hard_timeout_grace: float = 5.0
    cancel_grace: float = 10.0
    max_worker_lost: int = 3
    definition_modules: str = ""  # comma-separated modules exposing DEFINITIONS
    visibility_timeout: int = 691_200  # 8 days
    worker_events: bool = True
    worker_concurrency: int = 0
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_token: str = ""
    metrics_port: int = 0
    metrics_dir: str = ""
    flower_basic_auth: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; raise one error naming every bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for attr, (name, parse, default) in _SPEC.items():
            raw = env.get(name)
            if raw is None or raw == "":
                if default is None:
                    problems.append(f"{name} is required")
                    continue
                raw = default
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                # Never echo a value that may hold a password or key into logs.
                shown = name if name in _SENSITIVE else f"{name}={raw!r}"
                problems.append(f"{shown}: {exc}")
        # Cross-checks too, on whatever parsed, so one error names every problem at once.
        problems.extend(_cross_checks(values))
        if problems:
            raise ConfigurationError(problems)
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with some fields replaced (tests and the dev command)."""
        return replace(self, **changes)


def _cross_checks(values: dict[str, Any]) -> list[str]:
    """Check combinations; a check whose inputs did not parse is skipped (already reported)."""
    problems = []
    algorithm = values.get("jwt_algorithm")
    if algorithm and algorithm != "HS256":
        if not (values.get("jwt_public_key") or values.get("jwt_jwks_url")):
            problems.append(
                f"TASKEXEC_JWT_ALGORITHM={algorithm} needs TASKEXEC_JWT_PUBLIC_KEY or "
                "TASKEXEC_JWT_JWKS_URL"
            )
    secret = values.get("jwt_secret", "")
    if algorithm == "HS256" and secret and len(secret) < 32:
        problems.append("TASKEXEC_JWT_SECRET must be at least 32 characters")
    if (
        "heartbeat_seconds" in values
        and "lease_seconds" in values
        and (values["heartbeat_seconds"] * 2 > values["lease_seconds"])
    ):
        problems.append("TASKEXEC_HEARTBEAT_SECONDS must be at most half of TASKEXEC_LEASE_SECONDS")
    countdown, visibility = values.get("retry_countdown_max"), values.get("visibility_timeout")
    if countdown is not None and visibility is not None and countdown >= visibility:
        # A retry held by a worker past the visibility timeout would be delivered twice.
        problems.append("TASKEXEC_RETRY_COUNTDOWN_MAX must be below TASKEXEC_VISIBILITY_TIMEOUT")
    return problems


def variables() -> list[tuple[str, str | None]]:
    """List (variable, default) pairs, for documentation checks."""
    return [(name, default) for name, _, default in _SPEC.values()]


assert {f.name for f in fields(Settings)} == set(_SPEC), "Settings and _SPEC disagree"
