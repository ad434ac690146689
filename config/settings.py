"""Settings: the one place that reads the environment, validated all at once."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

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


def _niceness(raw: str) -> int:
    value = _int(raw)
    if not 0 <= value <= 19:
        raise ValueError("must be from 0 (as other processes) to 19 (only idle CPU)")
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


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(raw: str) -> float | None:
    """Seconds in a duration such as 90s, 15m, 12h, 30d or 2w; None for `off` (keep forever)."""
    value = raw.strip().lower()
    if value == "off":
        return None
    match = _DURATION.match(value)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError("expected a duration such as 90s, 12h or 30d, or off")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _duration(raw: str) -> str:
    """A checked duration (or off), kept as spelled so that to_env gives it back unchanged."""
    parse_duration(raw)
    return raw.strip().lower()


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


def _origin(raw: str) -> str:
    """An http(s) origin (scheme://host[:port]), without a trailing slash; empty for none."""
    value = raw.strip().rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("the port is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL such as https://tasks.example.com")
    if parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError("expected scheme://host[:port] only, no path, query or credentials")
    return value


def _host_list(raw: str) -> str:
    """Comma-separated host names, lower-cased, without ports."""
    hosts = [h.strip().lower() for h in raw.split(",") if h.strip()]
    for host in hosts:
        if not re.fullmatch(r"[a-z0-9.\-]+|\[?[0-9a-f:.]+\]?", host):
            raise ValueError(f"{host!r} is not a host name")
    return ",".join(hosts)


def _env(name: str, parse: Callable[[str], Any], *, sensitive: bool = False) -> dict[str, Any]:
    """A field's metadata: the variable it is read from and its parser.

    `sensitive` marks values that may carry credentials, never echoed in an error.
    """
    return {"env": name, "parse": parse, "sensitive": sensitive}


@dataclass(frozen=True)
class Settings:
    """Every knob of the service, typed; build with `from_env` or directly in tests.

    Each field declares its variable, parser and default once; a field without a default
    is a required variable.
    """

    database_url: str = field(metadata=_env("DATABASE_URL", _postgres_url, sensitive=True))
    redis_url: str = field(metadata=_env("REDIS_URL", _redis_url, sensitive=True))
    jwt_algorithm: str = field(
        default="HS256",
        metadata=_env("TASKEXEC_JWT_ALGORITHM", _choice("HS256", "RS256", "ES256")),
    )
    jwt_secret: str = field(default="", metadata=_env("TASKEXEC_JWT_SECRET", _text, sensitive=True))
    jwt_public_key: str = field(
        default="", metadata=_env("TASKEXEC_JWT_PUBLIC_KEY", _text, sensitive=True)
    )
    jwt_jwks_url: str = field(default="", metadata=_env("TASKEXEC_JWT_JWKS_URL", _text))
    jwt_issuer: str = field(default="", metadata=_env("TASKEXEC_JWT_ISSUER", _text))
    jwt_audience: str = field(default="", metadata=_env("TASKEXEC_JWT_AUDIENCE", _text))
    jwt_leeway: int = field(default=10, metadata=_env("TASKEXEC_JWT_LEEWAY", _non_negative_int))
    # seconds a token may live from its iat (or from now) to its exp; 0 means no limit
    jwt_max_lifetime: int = field(
        default=86400, metadata=_env("TASKEXEC_JWT_MAX_LIFETIME", _non_negative_int)
    )
    ratelimit_enabled: bool = field(
        default=True, metadata=_env("TASKEXEC_RATELIMIT_ENABLED", _bool)
    )
    ratelimit_default: str = field(
        default="100/minute", metadata=_env("TASKEXEC_RATELIMIT_DEFAULT", parse_rate)
    )
    ratelimit_bulk: str = field(
        default="20/minute", metadata=_env("TASKEXEC_RATELIMIT_BULK", parse_rate)
    )
    # Public URLs in responses (a Task API's endpoint) start with this origin; unset, with the
    # request's Host only when it is one of allowed_hosts (else the URL is relative), so a
    # forged Host header never ends up in a response.
    public_url: str = field(default="", metadata=_env("TASKEXEC_PUBLIC_URL", _origin))
    allowed_hosts: str = field(
        default="localhost,127.0.0.1,::1", metadata=_env("TASKEXEC_ALLOWED_HOSTS", _host_list)
    )
    trusted_proxies: int = field(
        default=0, metadata=_env("TASKEXEC_TRUSTED_PROXIES", _non_negative_int)
    )
    max_body_bytes: int = field(
        default=1024 * 1024, metadata=_env("TASKEXEC_MAX_BODY_BYTES", _positive_int)
    )
    max_json_depth: int = field(default=32, metadata=_env("TASKEXEC_MAX_JSON_DEPTH", _positive_int))
    bulk_max_tasks: int = field(
        default=100, metadata=_env("TASKEXEC_BULK_MAX_TASKS", _positive_int)
    )
    idempotency_ttl: int = field(
        default=86400, metadata=_env("TASKEXEC_IDEMPOTENCY_TTL", _positive_int)
    )
    # Larger list totals are estimates; 0: always exact.
    list_exact_count_max: int = field(
        default=10_000, metadata=_env("TASKEXEC_LIST_EXACT_COUNT_MAX", _non_negative_int)
    )
    db_pool_max: int = field(default=10, metadata=_env("TASKEXEC_DB_POOL_MAX", _positive_int))
    db_connect_timeout: int = field(
        default=5, metadata=_env("TASKEXEC_DB_CONNECT_TIMEOUT", _positive_int)
    )
    definition_cache_seconds: int = field(
        default=5, metadata=_env("TASKEXEC_DEFINITION_CACHE_SECONDS", _non_negative_int)
    )
    lease_seconds: int = field(default=30, metadata=_env("TASKEXEC_LEASE_SECONDS", _positive_int))
    heartbeat_seconds: float = field(
        default=2.0, metadata=_env("TASKEXEC_HEARTBEAT_SECONDS", _positive_float)
    )
    sweep_interval: float = field(
        default=1.0, metadata=_env("TASKEXEC_SWEEP_INTERVAL", _positive_float)
    )
    republish_after: int = field(
        default=60, metadata=_env("TASKEXEC_REPUBLISH_AFTER", _positive_int)
    )
    retry_countdown_max: int = field(
        default=300, metadata=_env("TASKEXEC_RETRY_COUNTDOWN_MAX", _non_negative_int)
    )
    hard_timeout_grace: float = field(
        default=5.0, metadata=_env("TASKEXEC_HARD_TIMEOUT_GRACE", _positive_float)
    )
    cancel_grace: float = field(
        default=10.0, metadata=_env("TASKEXEC_CANCEL_GRACE", _positive_float)
    )
    max_worker_lost: int = field(
        default=3, metadata=_env("TASKEXEC_MAX_WORKER_LOST", _positive_int)
    )
    # Fair use (docs/architecture.md, "Release"). A JWT principal's most RUNNING tasks at
    # once (an API key's is its maxRunning); 0: unlimited.
    max_running_per_principal: int = field(
        default=0, metadata=_env("TASKEXEC_MAX_RUNNING_PER_PRINCIPAL", _non_negative_int)
    )
    # A principal's most tasks not yet running (PENDING or RETRYING); past it, 429 QUEUE_FULL.
    max_queued_per_principal: int = field(
        default=1_000_000, metadata=_env("TASKEXEC_MAX_QUEUED_PER_PRINCIPAL", _positive_int)
    )
    # The messages an executor's queue in Redis may hold: this many per slot of its live
    # workers, and never fewer than the minimum. Beyond it tasks wait in Postgres and the
    # releaser sends them round robin across owners.
    dispatch_window_per_slot: int = field(
        default=4, metadata=_env("TASKEXEC_DISPATCH_WINDOW_PER_SLOT", _positive_int)
    )
    dispatch_window_min: int = field(
        default=20, metadata=_env("TASKEXEC_DISPATCH_WINDOW_MIN", _positive_int)
    )
    # Seconds between the releaser's looks at a full window while tasks wait for room.
    release_poll: float = field(
        default=0.02, metadata=_env("TASKEXEC_RELEASE_POLL", _positive_float)
    )
    # Comma-separated modules exposing DEFINITIONS.
    # How long a finished task (with its attempts, logs and idempotency record) is kept after
    # its endTime; a definition's `retention` overrides both. Empty RETENTION_FAILED: the same.
    retention: str = field(default="30d", metadata=_env("TASKEXEC_RETENTION", _duration))
    retention_failed: str = field(default="", metadata=_env("TASKEXEC_RETENTION_FAILED", _duration))
    # Seconds between the sweeper's purge rounds when nothing is left to purge.
    purge_interval: float = field(
        default=30.0, metadata=_env("TASKEXEC_PURGE_INTERVAL", _positive_float)
    )
    # Tasks a second the purge deletes at most, in evenly spaced batches (docs/benchmarks.md,
    # Retention).
    purge_rate: float = field(
        default=12_000.0, metadata=_env("TASKEXEC_PURGE_RATE", _positive_float)
    )
    definition_modules: str = field(default="", metadata=_env("TASKEXEC_DEFINITION_MODULES", _text))
    # 8 days: above the longest attempt the API accepts (a week) plus its hard-limit grace.
    visibility_timeout: int = field(
        default=691_200, metadata=_env("TASKEXEC_VISIBILITY_TIMEOUT", _positive_int)
    )
    # Off: task events cost the worker a publish per state change. Flower switches them on
    # in the running workers itself (its `enable_events`), so only a watched fleet pays.
    worker_events: bool = field(default=False, metadata=_env("TASKEXEC_WORKER_EVENTS", _bool))
    # Celery's INFO lines for every task received and returned: a tenth of a no-op task's CPU.
    worker_task_log: bool = field(default=False, metadata=_env("TASKEXEC_WORKER_TASK_LOG", _bool))
    worker_concurrency: int = field(
        default=0, metadata=_env("TASKEXEC_WORKER_CONCURRENCY", _non_negative_int)
    )
    log_format: str = field(
        default="text", metadata=_env("TASKEXEC_LOG_FORMAT", _choice("text", "json"))
    )
    log_level: str = field(
        default="INFO",
        metadata=_env("TASKEXEC_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    metrics_token: str = field(
        default="", metadata=_env("TASKEXEC_METRICS_TOKEN", _text, sensitive=True)
    )
    metrics_port: int = field(default=0, metadata=_env("TASKEXEC_METRICS_PORT", _non_negative_int))
    metrics_dir: str = field(default="", metadata=_env("PROMETHEUS_MULTIPROC_DIR", _text))
    flower_basic_auth: str = field(
        default="", metadata=_env("TASKEXEC_FLOWER_BASIC_AUTH", _text, sensitive=True)
    )
    # Webhook deliveries (docs/webhooks.md, "How deliveries work"). Receivers on loopback,
    # private, link-local or metadata addresses are refused unless this is on (development).
    webhook_allow_private: bool = field(
        default=False, metadata=_env("TASKEXEC_WEBHOOK_ALLOW_PRIVATE", _bool)
    )
    # Seconds one attempt may take (connect, send, answer) before it counts as failed.
    webhook_timeout: float = field(
        default=10.0, metadata=_env("TASKEXEC_WEBHOOK_TIMEOUT", _positive_float)
    )
    # How long a delivery is retried (backoff with jitter) before it is marked FAILED.
    webhook_retry_horizon: str = field(
        default="24h", metadata=_env("TASKEXEC_WEBHOOK_RETRY_HORIZON", _duration)
    )
    # A subscription whose deliveries have failed without a success for this long is disabled.
    webhook_disable_after: str = field(
        default="5d", metadata=_env("TASKEXEC_WEBHOOK_DISABLE_AFTER", _duration)
    )
    # Events (and their delivered or failed deliveries) older than this are deleted.
    webhook_retention: str = field(
        default="7d", metadata=_env("TASKEXEC_WEBHOOK_RETENTION", _duration)
    )
    # Attempts in flight in one deliverer process, and to any one subscription.
    webhook_concurrency: int = field(
        default=32, metadata=_env("TASKEXEC_WEBHOOK_CONCURRENCY", _positive_int)
    )
    webhook_subscription_concurrency: int = field(
        default=8, metadata=_env("TASKEXEC_WEBHOOK_SUBSCRIPTION_CONCURRENCY", _positive_int)
    )
    # Seconds between two looks of a deliverer at the queue of new events (status change ->
    # receiver latency is about this plus the request; each look is one small statement).
    webhook_poll: float = field(
        default=0.05, metadata=_env("TASKEXEC_WEBHOOK_POLL", _positive_float)
    )
    # The deliverer's CPU priority (its niceness, added at start): where it shares a host with
    # task workers it yields the CPU to them, so deliveries do not slow tasks (0: no yielding).
    webhook_nice: int = field(default=10, metadata=_env("TASKEXEC_WEBHOOK_NICE", _niceness))
    # Subscriptions one owner may have (0: no limit). Every status change probes them, and
    # each matching one is a row and a request: the cap bounds what one key can make the
    # service do.
    webhook_max_per_owner: int = field(
        default=100, metadata=_env("TASKEXEC_WEBHOOK_MAX_PER_OWNER", _non_negative_int)
    )
    # Encrypts and signs the console's session cookie; unset, a random one is kept in Redis
    # (shared by every API process; sessions end when Redis loses it).
    console_secret: str = field(
        default="", metadata=_env("TASKEXEC_CONSOLE_SECRET", _text, sensitive=True)
    )
    console_session_seconds: int = field(
        default=28_800, metadata=_env("TASKEXEC_CONSOLE_SESSION_SECONDS", _positive_int)
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; raise one error naming every bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in fields(cls):
            name = spec.metadata["env"]
            raw = env.get(name)
            if raw is None or raw == "":
                if spec.default is MISSING:
                    problems.append(f"{name} is required")
                else:
                    values[spec.name] = spec.default
                continue
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                # Never echo a value that may hold a password or key into logs.
                shown = name if spec.metadata["sensitive"] else f"{name}={raw!r}"
                problems.append(f"{shown}: {exc}")
        # Cross-checks too, on whatever parsed, so one error names every problem at once.
        problems.extend(_cross_checks(values))
        if problems:
            raise ConfigurationError(problems)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that give a subprocess these same settings (`from_env`'s inverse).

        An empty value that is also the default is left out rather than set to "": other
        readers of the environment take presence as meaning (prometheus_client turns on
        multiprocess mode, writing its files into the working directory, when
        PROMETHEUS_MULTIPROC_DIR is present at all).
        """
        env = {spec.metadata["env"]: _format(getattr(self, spec.name)) for spec in fields(self)}
        unset = {spec.metadata["env"] for spec in fields(self) if spec.default == ""}
        return {name: value for name, value in env.items() if value or name not in unset}

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with some fields replaced (tests and the dev command)."""
        return replace(self, **changes)


def _format(value: Any) -> str:
    """A value as its variable spells it: true/false, and 2 rather than 2.0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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
    """List (variable, default) pairs, for documentation checks; None marks a required one."""
    return [
        (spec.metadata["env"], None if spec.default is MISSING else _format(spec.default))
        for spec in fields(Settings)
    ]
