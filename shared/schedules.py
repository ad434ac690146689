"""Schedule slots as pure functions: the next cron or interval slot, catch-up and bounds."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter

from shared.definitions import RetryPolicy
from shared.status import Priority, TaskType

#: The overlap policies a schedule may name.
OVERLAP_POLICIES = ("ALLOW", "SKIP", "CANCEL_PREVIOUS")
DEFAULT_CATCHUP_MS = 60_000
MIN_INTERVAL_MS = 1000
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


def template_row(
    template: dict[str, Any],
    definition: Any,
    owner: str,
    *,
    schedule_id: uuid.UUID,
    scheduled_for: datetime | None,
) -> dict[str, Any]:
    """The NewTask fields for a schedule's task template (validated when the schedule was
    written), built as a submission builds its row: the definition's defaults, overridden by
    the template's priority and executionConfig.
    """
    config = template.get("executionConfig") or {}
    policy = RetryPolicy.from_json(
        config.get("retryPolicy") or {}, base=RetryPolicy.from_json(definition.retry_policy)
    )
    return {
        "id": uuid.uuid4(),
        "owner": owner,
        "task_definition_id": definition.id,
        "definition_version": definition.version,
        "workflow_instance_id": template.get("workflowInstanceId"),
        "type": definition.type,
        "priority": Priority(template.get("priority") or Priority.MEDIUM.value).rank,
        "executor": definition.executor,
        "input": template.get("input", {}),
        "timeout_ms": int(config.get("timeout") or definition.timeout_ms),
        "retry_policy": policy.to_json(),
        "source": "schedules",
        "published": definition.type != TaskType.MANUAL.value,
        "schedule_id": schedule_id,
        "scheduled_for": scheduled_for,
    }
