"""Settings.from_env: defaults, one error naming every bad variable, cross-checks, .env.example."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from config import settings as settings_module
from config.settings import ConfigurationError, Settings, parse_rate, variables

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/taskexec",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def from_env(**extra: str) -> Settings:
    return Settings.from_env({**REQUIRED, **extra})


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    return caught.value.problems


def test_only_the_two_urls_are_needed_and_the_rest_take_their_defaults():
    parsed = Settings.from_env(REQUIRED)
    assert parsed == Settings(REQUIRED["DATABASE_URL"], REQUIRED["REDIS_URL"])
    assert parsed.max_body_bytes == 1024 * 1024
    assert parsed.ratelimit_default == "100/minute"
    assert parsed.ratelimit_bulk == "20/minute"
    assert parsed.jwt_algorithm == "HS256"


def test_to_env_gives_a_subprocess_the_same_settings():
    changed = from_env().with_overrides(
        jwt_secret="s" * 40,
        ratelimit_enabled=False,
        worker_events=False,
        heartbeat_seconds=0.3,
        sweep_interval=1,
        hard_timeout_grace=1.5,
        lease_seconds=6,
        definition_modules="a.b,c",
        log_format="json",
    )
    env = changed.to_env()
    assert env["TASKEXEC_RATELIMIT_ENABLED"] == "false"
    assert env["TASKEXEC_HEARTBEAT_SECONDS"] == "0.3"
    assert env["TASKEXEC_SWEEP_INTERVAL"] == "1"
    assert Settings.from_env(env) == changed
    names = [name for name, _ in variables()]
    assert [name for name in names if name in env] == list(env)
    # An empty default is left unset: prometheus_client, for one, acts on mere presence.
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert changed.with_overrides(metrics_dir="/m").to_env()["PROMETHEUS_MULTIPROC_DIR"] == "/m"


def test_empty_values_count_as_unset():
    parsed = from_env(TASKEXEC_LEASE_SECONDS="", TASKEXEC_LOG_LEVEL="")
    assert parsed.lease_seconds == 30
    assert parsed.log_level == "INFO"


def test_missing_required_urls_are_named_together():
    problems = problems_of({})
    assert problems == ["DATABASE_URL is required", "REDIS_URL is required"]
    assert problems_of({"DATABASE_URL": "", "REDIS_URL": ""}) == problems


def _bad_value_env() -> dict[str, str]:
    """A bad value for every variable whose parser can reject anything."""
    return {
        spec.metadata["env"]: "not valid %%"
        for spec in dataclasses.fields(Settings)
        if spec.metadata["parse"] is not settings_module._text
    }


def test_every_bad_variable_is_named_in_one_error():
    env = _bad_value_env()
    assert len(env) >= 25  # sanity: most knobs are validated
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    error = caught.value
    assert len(error.problems) == len(env)
    for name in env:
        assert (
            sum(p.startswith(name + ":") or p.startswith(name + "=") for p in error.problems) == 1
        )
        assert name in str(error)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("TASKEXEC_MAX_BODY_BYTES", "0"),
        ("TASKEXEC_MAX_BODY_BYTES", "-5"),
        ("TASKEXEC_MAX_BODY_BYTES", "1.5"),
        ("TASKEXEC_JWT_LEEWAY", "-1"),
        ("TASKEXEC_SWEEP_INTERVAL", "0"),
        ("TASKEXEC_SWEEP_INTERVAL", "nan"),
        ("TASKEXEC_SWEEP_INTERVAL", "inf"),
        ("TASKEXEC_SWEEP_INTERVAL", "-0.5"),
        ("TASKEXEC_RATELIMIT_ENABLED", "maybe"),
        ("TASKEXEC_RATELIMIT_DEFAULT", "100"),
        ("TASKEXEC_RATELIMIT_DEFAULT", "fast/minute"),
        ("TASKEXEC_LOG_FORMAT", "xml"),
        ("TASKEXEC_LOG_LEVEL", "debug"),
        ("TASKEXEC_JWT_ALGORITHM", "none"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("REDIS_URL", "http://localhost:6379"),
    ],
)
def test_invalid_values_are_rejected(name, raw):
    problems = problems_of({**REQUIRED, name: raw})
    assert len(problems) == 1 and problems[0].startswith(name)


@pytest.mark.parametrize("raw", ["1", "true", "YES", "on", " True "])
def test_true_values(raw):
    assert from_env(TASKEXEC_WORKER_EVENTS=raw).worker_events is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off"])
def test_false_values(raw):
    assert from_env(TASKEXEC_WORKER_EVENTS=raw).worker_events is False


def test_values_are_typed():
    parsed = from_env(
        TASKEXEC_MAX_BODY_BYTES=" 2048 ",
        TASKEXEC_HEARTBEAT_SECONDS="0.5",
        TASKEXEC_RATELIMIT_BULK=" 5 per second ",
        DATABASE_URL="postgres://u@h/db",
        REDIS_URL="rediss://h:6380/1",
    )
    assert parsed.max_body_bytes == 2048
    assert parsed.heartbeat_seconds == 0.5
    assert parsed.ratelimit_bulk == "5 per second"
    assert parsed.database_url == "postgres://u@h/db"
    assert parsed.redis_url == "rediss://h:6380/1"


@pytest.mark.parametrize(
    "rate", ["100/minute", "20/minutes", "5 per second", "10/2 hours", "1/day"]
)
def test_parse_rate_accepts_limiter_syntax(rate):
    assert parse_rate(f" {rate} ") == rate


def test_credentials_in_bad_values_are_not_echoed():
    problems = problems_of({"DATABASE_URL": "mysql://user:hunter2@db/x", "REDIS_URL": "nope:pw"})
    assert problems[0].startswith("DATABASE_URL")
    assert "hunter2" not in " ".join(problems) and "nope:pw" not in " ".join(problems)
    # Harmless values are shown, to help whoever fixes them.
    assert "'abc'" in problems_of({**REQUIRED, "TASKEXEC_LEASE_SECONDS": "abc"})[0]


def test_asymmetric_jwt_needs_a_public_key_or_jwks():
    problems = problems_of({**REQUIRED, "TASKEXEC_JWT_ALGORITHM": "RS256"})
    assert problems == [
        "TASKEXEC_JWT_ALGORITHM=RS256 needs TASKEXEC_JWT_PUBLIC_KEY or TASKEXEC_JWT_JWKS_URL"
    ]
    assert from_env(TASKEXEC_JWT_ALGORITHM="RS256", TASKEXEC_JWT_JWKS_URL="https://x/jwks")
    assert from_env(TASKEXEC_JWT_ALGORITHM="ES256", TASKEXEC_JWT_PUBLIC_KEY="-----BEGIN...")


def test_a_short_hs256_secret_is_refused():
    assert problems_of({**REQUIRED, "TASKEXEC_JWT_SECRET": "x" * 31}) == [
        "TASKEXEC_JWT_SECRET must be at least 32 characters"
    ]
    assert from_env(TASKEXEC_JWT_SECRET="x" * 32).jwt_secret == "x" * 32


def test_heartbeat_must_fit_twice_in_the_lease():
    env = {**REQUIRED, "TASKEXEC_LEASE_SECONDS": "4", "TASKEXEC_HEARTBEAT_SECONDS": "2.5"}
    assert problems_of(env) == [
        "TASKEXEC_HEARTBEAT_SECONDS must be at most half of TASKEXEC_LEASE_SECONDS"
    ]
    assert Settings.from_env({**env, "TASKEXEC_HEARTBEAT_SECONDS": "2"}).heartbeat_seconds == 2


def test_cross_checks_are_reported_with_the_other_problems():
    problems = problems_of({"TASKEXEC_JWT_SECRET": "short", "TASKEXEC_LOG_LEVEL": "loud"})
    assert "DATABASE_URL is required" in problems
    assert any(p.startswith("TASKEXEC_LOG_LEVEL") for p in problems)
    assert "TASKEXEC_JWT_SECRET must be at least 32 characters" in problems
    # A cross-check whose input is itself invalid is not reported twice.
    problems = problems_of({**REQUIRED, "TASKEXEC_LEASE_SECONDS": "x"})
    assert len(problems) == 1


def test_with_overrides_copies_and_settings_are_frozen():
    base = from_env()
    changed = base.with_overrides(max_body_bytes=1000)
    assert changed.max_body_bytes == 1000 and base.max_body_bytes == 1024 * 1024
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.max_body_bytes = 5  # type: ignore[misc]


def test_from_env_reads_os_environ_by_default(monkeypatch):
    for name, _ in variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", REQUIRED["DATABASE_URL"])
    monkeypatch.setenv("REDIS_URL", REQUIRED["REDIS_URL"])
    monkeypatch.setenv("TASKEXEC_BULK_MAX_TASKS", "7")
    assert Settings.from_env().bulk_max_tasks == 7


# ---------------------------------------------------------------- .env.example


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def test_env_example_lists_every_variable():
    documented = _env_example()
    missing = [name for name, _ in variables() if name not in documented]
    assert not missing, f".env.example lacks {missing}"
    unknown = set(documented) - {name for name, _ in variables()}
    assert not unknown, f".env.example documents unknown variables {unknown}"


def test_env_example_shows_the_real_defaults_and_parses():
    documented = _env_example()
    for name, default in variables():
        if default is not None:
            assert documented[name] == default, name
    Settings.from_env(documented)


def test_env_example_comments_every_variable():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert index > 0 and lines[index - 1].startswith("# "), f"no comment above {line!r}"


def test_retry_countdown_must_stay_below_the_visibility_timeout() -> None:
    from config.settings import ConfigurationError, Settings

    env = {
        "DATABASE_URL": "postgresql://localhost/x",
        "REDIS_URL": "redis://localhost/0",
        "TASKEXEC_RETRY_COUNTDOWN_MAX": "3600",
        "TASKEXEC_VISIBILITY_TIMEOUT": "3600",
    }
    try:
        Settings.from_env(env)
    except ConfigurationError as exc:
        assert any("TASKEXEC_RETRY_COUNTDOWN_MAX" in p for p in exc.problems)
    else:
        raise AssertionError("a countdown as long as the visibility timeout was accepted")
