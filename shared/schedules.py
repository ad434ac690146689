"""Schedule slots as pure functions: the next cron or interval slot, catch-up and bounds."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter

from shared import store, task_rows
from shared.credentials import Principal
from shared.store import NewTask

#: The overlap policies a schedule may name.
OVERLAP_POLICIES = ("ALLOW", "SKIP", "CANCEL_PREVIOUS")
DEFAULT_CATCHUP_MS = 60_000
MIN_INTERVAL_MS = 1000
#: Why a slot was skipped (the schedule's lastSkipReason).
SKIP_CATCHUP = "CATCHUP_WINDOW"  # missed by longer than catchupWindow (no sweeper ran)
SKIP_OVERLAP = "OVERLAP"  # overlapPolicy SKIP (or CANCEL_PREVIOUS catching up)
SKIP_DEFINITION = "DEFINITION_NOT_FOUND"  # the template's definition is not published
SKIP_INPUT = "INPUT_INVALID"  # the input no longer matches the definition's schema
SKIP_TEMPLATE = "TEMPLATE_INVALID"  # the template cannot make a task for another reason
SKIP_REASONS = (SKIP_CATCHUP, SKIP_OVERLAP, SKIP_DEFINITION, SKIP_INPUT, SKIP_TEMPLATE)
#: Slots one schedule fires at most per sweep round (the rest next round, still in order).
MAX_FIRES_PER_ROUND = 100
#: Missed cron slots counted one by one at most; past that the skip count is a lower bound.
_MAX_SKIP_WALK = 10_000
_TINY = timedelta(microseconds=1)


@dataclass(frozen=True)
class Timing:
    """When a schedule's slots fall: exactly one of `cron` and `interval_ms`."""

    cron: str | None
    interval_ms: int | None
    timezone: str
    anchor: datetime  # interval slots are anchor + k * interval (startAt, else createdAt)
    start_at: datetime | None = None
    end_at: datetime | None = None


def valid_cron(expr: str) -> bool:
    """Say whether `expr` is a standard five-field cron expression."""
    return len(expr.split()) == 5 and croniter.is_valid(expr)


def valid_timezone(name: str) -> bool:
    """Say whether `name` is an IANA time zone this host knows."""
    if name not in available_timezones() and name != "UTC":
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def next_slot(timing: Timing, after: datetime) -> datetime | None:
    """The first slot strictly after `after` within [start_at, end_at]; None once past end_at."""
    if timing.start_at is not None and after < timing.start_at:
        after = timing.start_at - _TINY  # the start itself may be a slot
    slot = _cron_after(timing, after) if timing.cron else _interval_after(timing, after)
    if timing.end_at is not None and slot > timing.end_at:
        return None
    return slot


def _interval_after(timing: Timing, after: datetime) -> datetime:
    assert timing.interval_ms is not None
    step = timedelta(milliseconds=timing.interval_ms)
    if after < timing.anchor:
        return timing.anchor
    return timing.anchor + step * ((after - timing.anchor) // step + 1)


def _cron_after(timing: Timing, after: datetime) -> datetime:
    """Walk the cron on the zone's wall clock, each wall time taken at its first occurrence.

    A wall time the spring-forward gap skips maps (fold=0) to the instant one gap later, so
    it still fires once; a wall time the fall-back repeats maps to its first occurrence only,
    so it fires once. A slot is always an instant strictly after `after`.
    """
    assert timing.cron is not None
    return _cron_next(timing.cron, timing.timezone, after)


# Schedules sharing a cron and zone (10,000 on `* * * * *`) share each computation.
@functools.lru_cache(maxsize=4096)
def _cron_next(cron: str, timezone: str, after: datetime) -> datetime:
    zone = ZoneInfo(timezone)
    wall = after.astimezone(zone).replace(tzinfo=None)
    walk = croniter(cron, wall)
    while True:
        candidate: datetime = walk.get_next(datetime)
        slot = candidate.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if slot > after:
            return slot


@dataclass
class Advance:
    """What one sweep does to a due schedule: slots to fire, slots skipped, the next due."""

    fire: list[datetime] = field(default_factory=list)
    skipped: int = 0
    last_skipped: datetime | None = None
    next_run_at: datetime | None = None


def advance(
    timing: Timing,
    due: datetime,
    now: datetime,
    catchup_ms: int,
    max_fires: int = MAX_FIRES_PER_ROUND,
) -> Advance:
    """Plan a due schedule's round: fire the slots from `due` up to `now` still within the
    catch-up window, skip those missed by longer, and find the next slot to wait for.
    """
    out = Advance()
    horizon = now - timedelta(milliseconds=catchup_ms)
    slot: datetime | None = due
    if due < horizon:
        slot, out.skipped, out.last_skipped = _skip_until(timing, due, horizon)
    while slot is not None and slot <= now and len(out.fire) < max_fires:
        out.fire.append(slot)
        slot = next_slot(timing, slot)
    out.next_run_at = slot
    return out


def _skip_until(
    timing: Timing, slot: datetime, horizon: datetime
) -> tuple[datetime | None, int, datetime]:
    """Skip the slots before `horizon`: (first slot at or after it, how many skipped, last)."""
    if timing.interval_ms is not None:
        step = timedelta(milliseconds=timing.interval_ms)
        count = (horizon - slot) // step + (1 if (horizon - slot) % step else 0)
        last = slot + step * (count - 1)
        if timing.end_at is not None and last > timing.end_at:
            count = (timing.end_at - slot) // step + 1
            last = slot + step * (count - 1)
        return next_slot(timing, last), count, last
    count, last = 0, slot
    current: datetime | None = slot
    while current is not None and current < horizon and count < _MAX_SKIP_WALK:
        count, last = count + 1, current
        current = next_slot(timing, current)
    if current is not None and current < horizon:  # walked the cap: jump to the horizon
        current = next_slot(timing, horizon - _TINY)
        last = horizon
    return current, count, last


def first_run(timing: Timing, now: datetime) -> datetime | None:
    """The first slot a new (or resumed, or edited) schedule waits for: the next after now."""
    return next_slot(timing, now - _TINY)


def next_run_after_edit(timing: Timing, pending: datetime | None, now: datetime) -> datetime | None:
    """The slot an edited (or resumed) schedule waits for next.

    `pending`: the slot it was waiting for, when that slot is already due but not yet fired
    and the schedule stays active (not paused before or after the edit). The edit keeps it:
    the first slot of the new timing at or after it, so a PATCH in the second between a slot
    and the sweeper's round does not lose that slot. Otherwise, the first slot after now: a
    pause does not fire the slots it covered.
    """
    if pending is not None and pending <= now:
        return next_slot(timing, pending - _TINY)
    return first_run(timing, now)


def fired_task(
    template: dict[str, Any],
    definition: store.DefinitionRow,
    owner: str,
    max_running: int | None = None,
) -> NewTask:
    """The task row a schedule's template fires, built exactly as a submission's row.

    The input is checked against the definition's current schema (InputValidationError when
    it no longer matches), and the retry policy, timeout and executor come from the
    definition, overridden by the template's executionConfig and priority. `max_running` is
    the owner's per-principal limit (`running_limit`), as a submission of theirs would carry.
    """
    principal = Principal(subject=owner, max_running=max_running)
    return task_rows.new_task(principal, template, definition, source="schedules")


def running_limit(keys: dict[str, int | None], owner: str, default: int | None) -> int | None:
    """The per-principal limit a schedule's tasks run under: the tightest maxRunning among its
    owner's active API keys (`store.owner_running_limits`), or for an owner with no key (a JWT
    subject) TASKEXEC_MAX_RUNNING_PER_PRINCIPAL (`default`, None or 0: unlimited).
    """
    if owner in keys:
        return keys[owner]
    return default or None
