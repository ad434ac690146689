"""Retention arithmetic: durations, which setting a task takes, when it expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.settings import ConfigurationError, Settings, parse_duration
from shared.definitions import TaskDefinition
from shared.retention import Retention
from shared.status import TaskType

URLS = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"}
END = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43_200),
        ("30d", 2_592_000),
        ("2w", 1_209_600),
        ("1.5h", 5400),
        (" 7D ", 604_800),
        ("off", None),
        ("OFF", None),
    ],
)
def test_durations_parse(raw: str, seconds: float | None) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "30", "0s", "-1d", "1y", "d", "1 day", "forever", "1h30m"])
def test_bad_durations_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


def test_settings_default_to_thirty_days_for_everything() -> None:
    settings = Settings.from_env(URLS)
    assert (settings.retention, settings.retention_failed) == ("30d", "")
    policy = Retention.from_settings(settings)
    assert policy.seconds("COMPLETED") == policy.seconds("FAILED") == 30 * 86400


def test_a_bad_retention_is_named_in_the_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="TASKEXEC_RETENTION_FAILED='soon'"):
        Settings.from_env({**URLS, "TASKEXEC_RETENTION_FAILED": "soon"})


def test_failures_take_their_own_retention_and_a_definition_overrides_both() -> None:
    settings = Settings.from_env(
        {**URLS, "TASKEXEC_RETENTION": "1d", "TASKEXEC_RETENTION_FAILED": "7d"}
    )
    policy = Retention.from_settings(settings)
    assert policy.seconds("COMPLETED") == policy.seconds("CANCELLED") == 86400
    assert policy.seconds("FAILED") == policy.seconds("TIMED_OUT") == 7 * 86400
    assert policy.seconds("FAILED", "1h") == policy.seconds("COMPLETED", "1h") == 3600
    assert policy.seconds("COMPLETED", "off") is None


def test_expires_at_is_end_time_plus_retention_and_null_when_kept() -> None:
    policy = Retention(default=60.0, failed=None)
    assert policy.expires_at("COMPLETED", END, False, None) == END + timedelta(seconds=60)
    assert policy.expires_at("COMPLETED", END, True, None) is None  # pinned
    assert policy.expires_at("FAILED", END, False, None) is None  # failures kept forever
    assert policy.expires_at("RUNNING", None, False, None) is None
    assert policy.expires_at("FAILED", END, False, "2h") == END + timedelta(hours=2)


def test_purge_classes_skip_what_is_kept_forever() -> None:
    policy = Retention(default=60.0, failed=None)
    classes = list(policy.classes({"echo": None, "keep": "off", "short": "1s"}))
    assert {(c.definition_id, c.status, c.seconds) for c in classes} == {
        ("echo", "CANCELLED", 60.0),
        ("echo", "COMPLETED", 60.0),
        *{("short", s, 1.0) for s in ("CANCELLED", "COMPLETED", "FAILED", "TIMED_OUT")},
    }


def test_a_definition_carries_a_checked_retention() -> None:
    made = TaskDefinition("d", "D", "", TaskType.AUTOMATED, "1.0.0", {}, {}, retention="12h")
    assert made.to_row()["retention"] == "12h"
    with pytest.raises(ValueError, match="duration"):
        TaskDefinition("d", "D", "", TaskType.AUTOMATED, "1.0.0", {}, {}, retention="soon")
