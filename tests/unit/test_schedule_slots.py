"""Slot computation: cron in a time zone (DST both ways), intervals, bounds and catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.schedules import Timing, advance, first_run, next_slot, valid_cron, valid_timezone

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def cron(expr: str, tz: str = "UTC", **kw: datetime) -> Timing:
    return Timing(cron=expr, interval_ms=None, timezone=tz, anchor=T0, **kw)


def every(ms: int, anchor: datetime = T0, **kw: datetime) -> Timing:
    return Timing(cron=None, interval_ms=ms, timezone="UTC", anchor=anchor, **kw)


def walk(timing: Timing, start: datetime, until: datetime) -> list[datetime]:
    slots, at = [], start
    while True:
        nxt = next_slot(timing, at)
        if nxt is None or nxt > until:
            return slots
        slots.append(nxt)
        at = nxt


def test_validation() -> None:
    assert valid_cron("*/5 * * * *")
    assert not valid_cron("* * * * * *")
    assert not valid_cron("61 * * * *")
    assert not valid_cron("nonsense")
    assert valid_timezone("Europe/Berlin") and valid_timezone("UTC")
    assert not valid_timezone("Mars/Olympus") and not valid_timezone("")


def test_cron_in_a_zone_reads_wall_time() -> None:
    timing = cron("0 9 * * *", "Europe/Berlin")
    assert next_slot(timing, T0) == datetime(2026, 1, 1, 8, tzinfo=UTC)  # 09:00 CET
    summer = datetime(2026, 7, 1, tzinfo=UTC)
    assert next_slot(timing, summer) == datetime(2026, 7, 1, 7, tzinfo=UTC)  # 09:00 CEST


def test_spring_forward_skipped_slot_fires_once() -> None:
    # New York 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    timing = cron("30 2 * * *", "America/New_York")
    slots = walk(timing, datetime(2026, 3, 7, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC))
    assert slots == [
        datetime(2026, 3, 7, 7, 30, tzinfo=UTC),  # 02:30 EST
        datetime(2026, 3, 8, 7, 30, tzinfo=UTC),  # the skipped 02:30, once, as 03:30 EDT
        datetime(2026, 3, 9, 6, 30, tzinfo=UTC),  # 02:30 EDT
    ]


def test_spring_forward_every_fifteen_minutes_has_no_duplicate() -> None:
    timing = cron("*/15 * * * *", "Europe/Berlin")  # 2026-03-29 02:00 CET -> 03:00 CEST
    slots = walk(
        timing, datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 3, 29, 2, tzinfo=UTC)
    )
    assert len(slots) == len(set(slots)) == 6  # 00:45Z .. 02:00Z, every 15 min of real time
    assert all(b - a == timedelta(minutes=15) for a, b in zip(slots, slots[1:], strict=False))


def test_fall_back_repeated_slot_fires_once() -> None:
    # New York 2026-11-01: 01:00-02:00 happens twice (EDT, then EST).
    timing = cron("30 1 * * *", "America/New_York")
    slots = walk(timing, datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    assert slots == [
        datetime(2026, 10, 31, 5, 30, tzinfo=UTC),  # 01:30 EDT
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # the first 01:30 (EDT) only
        datetime(2026, 11, 2, 6, 30, tzinfo=UTC),  # 01:30 EST
    ]


def test_fall_back_hourly_fires_each_wall_hour_once() -> None:
    timing = cron("0 * * * *", "Europe/Berlin")  # 2026-10-25 03:00 CEST -> 02:00 CET
    slots = walk(
        timing, datetime(2026, 10, 24, 23, tzinfo=UTC), datetime(2026, 10, 25, 3, tzinfo=UTC)
    )
    local = [s.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).hour for s in slots]
    assert local == sorted(set(local))  # 02:00 once, not twice


def test_interval_aligned_to_anchor() -> None:
    anchor = datetime(2026, 1, 1, 0, 0, 0, 250_000, tzinfo=UTC)
    timing = every(1000, anchor)
    assert next_slot(timing, T0) == anchor
    assert next_slot(timing, anchor) == anchor + timedelta(seconds=1)
    assert next_slot(timing, anchor + timedelta(seconds=5.1)) == anchor + timedelta(seconds=6)


def test_bounds() -> None:
    start = datetime(2026, 2, 1, tzinfo=UTC)
    timing = every(60_000, T0, start_at=start, end_at=start + timedelta(minutes=2))
    assert next_slot(timing, T0) == start
    assert walk(timing, T0, start + timedelta(days=1)) == [
        start,
        start + timedelta(minutes=1),
        start + timedelta(minutes=2),
    ]
    assert (
        first_run(cron("0 0 1 1 *", end_at=T0 + timedelta(days=1)), T0 + timedelta(hours=1)) is None
    )
    assert first_run(every(1000), T0) == T0


def test_advance_on_time_fires_the_slot() -> None:
    timing = every(1000)
    plan = advance(timing, T0, T0 + timedelta(milliseconds=3), 60_000)
    assert plan.fire == [T0]
    assert plan.skipped == 0 and plan.next_run_at == T0 + timedelta(seconds=1)


def test_advance_fires_late_slots_within_the_window() -> None:
    timing = every(1000)
    plan = advance(timing, T0, T0 + timedelta(seconds=4.5), 60_000)
    assert plan.fire == [T0 + timedelta(seconds=i) for i in range(5)]
    assert plan.next_run_at == T0 + timedelta(seconds=5)


def test_advance_skips_slots_missed_by_more_than_the_window() -> None:
    timing = every(1000)
    now = T0 + timedelta(hours=1, milliseconds=500)
    plan = advance(timing, T0, now, 10_000)
    assert plan.skipped == 3591  # T0 .. now-10.5s
    assert plan.last_skipped == T0 + timedelta(seconds=3590)
    assert plan.fire == [T0 + timedelta(seconds=s) for s in range(3591, 3601)]
    assert plan.next_run_at == T0 + timedelta(seconds=3601)


def test_advance_skips_cron_slots_and_caps_fires() -> None:
    timing = cron("* * * * *")
    plan = advance(timing, T0, T0 + timedelta(days=1), 60_000)
    assert plan.skipped == 1439 and plan.fire == [
        T0 + timedelta(days=1) - timedelta(minutes=1),
        T0 + timedelta(days=1),
    ]
    many = advance(every(1000), T0, T0 + timedelta(seconds=500), 10**9, max_fires=100)
    assert len(many.fire) == 100 and many.next_run_at == T0 + timedelta(seconds=100)


def test_advance_past_the_end_finishes() -> None:
    timing = every(1000, end_at=T0 + timedelta(seconds=2))
    plan = advance(timing, T0, T0 + timedelta(hours=1), 1000)
    assert plan.fire == [] and plan.skipped == 3 and plan.next_run_at is None
