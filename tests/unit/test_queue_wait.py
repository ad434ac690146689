"""The queue wait a worker observes at its claim: from submission, or from a delayed task's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from workers.metrics import queue_wait

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _claimed(attempts: int = 1, run_at: datetime | None = None, after: float = 2.5) -> object:
    return SimpleNamespace(
        attempts=attempts, created_at=T0, run_at=run_at, start_time=T0 + timedelta(seconds=after)
    )


def test_a_first_attempt_waited_from_its_submission():
    assert queue_wait(_claimed()) == 2.5


def test_a_delayed_task_waited_from_its_time_not_its_submission():
    assert queue_wait(_claimed(run_at=T0 + timedelta(seconds=2), after=2.25)) == 0.25
    # Released a little early by the clocks' grain: never a negative wait.
    assert queue_wait(_claimed(run_at=T0 + timedelta(seconds=3), after=2.9)) == 0.0


def test_later_attempts_are_not_observed():
    assert queue_wait(_claimed(attempts=2)) is None
