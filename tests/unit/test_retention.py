"""Retention arithmetic: durations, which setting a task takes, when it expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.settings import ConfigurationError, Settings, parse_duration
from shared.definitions import TaskDefinition
from shared.retention import Retention
from shared.status import TaskType
from workers.retention import Pacer, next_span

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


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_spaces_batches_to_the_rate_without_bursting_after_a_slow_one() -> None:
    clock = FakeClock()
    pacer = Pacer(1000.0, clock)
    clock.now = 0.1  # a batch of 500 started at 0 and took 0.1 s: it books 0.5 s
    assert pacer.wait(0.0, 500) == pytest.approx(0.4)
    clock.now = 0.55  # the next, started when due (0.5), books up to 1.0
    assert pacer.wait(0.5, 500) == pytest.approx(0.45)
    clock.now = 1.8  # a slow batch (0.8 s for 500): no wait after it...
    assert pacer.wait(1.0, 500) == 0.0
    clock.now = 1.85  # ...and no credit either: the next books from its own start
    assert pacer.wait(1.8, 500) == pytest.approx(0.45)
    clock.now = 2.3  # a short batch books only what it deleted
    assert pacer.wait(2.3, 100) == pytest.approx(0.1)


def test_the_pacer_holds_the_average_rate_over_many_batches() -> None:
    clock = FakeClock()
    pacer = Pacer(12_000.0, clock)
    deleted = 0
    for _ in range(240):
        started = clock.now
        clock.now += 0.01  # each batch takes 10 ms of the 500 / 12,000 s it books
        clock.now += pacer.wait(started, 500)
        deleted += 500
    assert deleted / clock.now == pytest.approx(12_000.0)


@pytest.mark.parametrize(
    ("found", "factor"),
    [
        (450, 1.0),  # on the aim (0.9 of the batch)
        (300, 1.5),
        (600, 0.75),  # more than a batch: the rest waits, the span shrinks
        (100, 2.0),  # at most doubled a step...
        (0, 2.0),
        (5000, 0.5),  # ...or halved
    ],
)
def test_the_span_scales_toward_nine_tenths_of_a_batch(found: int, factor: float) -> None:
    assert next_span(10.0, found, 500) == pytest.approx(10.0 * factor)


def test_the_span_stays_within_its_bounds() -> None:
    assert next_span(1e-3, 5000, 500) == 1e-3
    assert next_span(400 * 86400.0, 0, 500) == 400 * 86400.0
