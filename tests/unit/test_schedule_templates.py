"""A schedule's task built as a submission's row, why a slot is skipped, and a PATCH's next slot."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import store
from shared.schedules import (
    SKIP_DEFINITION,
    SKIP_INPUT,
    SKIP_TEMPLATE,
    Timing,
    fired_task,
    next_run_after_edit,
)
from workers.schedule_templates import build_template

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def definition(**over: Any) -> store.DefinitionRow:
    doc: dict[str, Any] = {
        "id": "orders",
        "version": "2.1.0",
        "name": "Orders",
        "description": "",
        "type": "AUTOMATED",
        "input_schema": {
            "type": "object",
            "properties": {"orderId": {"type": "string"}},
            "required": ["orderId"],
        },
        "output_schema": {"type": "object"},
        "timeout_ms": 30_000,
        "retry_policy": {"maxRetries": 3, "retryInterval": 500},
        "executor": "orders-executor",
        "security_context": {},
        "resource_requirements": {},
        "default_config": {},
        "created_at": T0,
        "updated_at": T0,
        **over,
    }
    return store.DefinitionRow(**doc)


def schedule(task: dict[str, Any]) -> store.Schedule:
    return store.Schedule(
        id=uuid.uuid4(),
        owner="team-a",
        name="nightly",
        cron=None,
        interval_ms=60_000,
        timezone="UTC",
        task=task,
        overlap_policy="ALLOW",
        catchup_window_ms=60_000,
        start_at=None,
        end_at=None,
        paused=False,
        next_run_at=T0,
        last_run_at=None,
        skipped_count=0,
        last_skipped_at=None,
        created_at=T0,
        updated_at=T0,
    )


def test_a_fired_task_is_a_submissions_row_with_the_definitions_defaults() -> None:
    row = fired_task(
        {"taskDefinitionId": "orders", "input": {"orderId": "O-1"}, "priority": "HIGH"},
        definition(),
        "team-a",
    )
    assert (row.owner, row.task_definition_id, row.definition_version) == (
        "team-a",
        "orders",
        "2.1.0",
    )
    assert (row.executor, row.timeout_ms, row.source) == ("orders-executor", 30_000, "schedules")
    assert row.retry_policy["maxRetries"] == 3 and row.published and row.run_at is None


def test_the_templates_execution_config_overrides_the_definition() -> None:
    row = fired_task(
        {
            "taskDefinitionId": "orders",
            "input": {"orderId": "O-1"},
            "executionConfig": {"timeout": 5000, "retryPolicy": {"maxRetries": 0}},
        },
        definition(),
        "team-a",
    )
    assert row.timeout_ms == 5000 and row.retry_policy["maxRetries"] == 0
    assert row.retry_policy["retryInterval"] == 500  # the rest still the definition's


def test_templates_that_cannot_make_a_task_say_why() -> None:
    good = {"taskDefinitionId": "orders", "input": {"orderId": "O-1"}}
    assert build_template(schedule(good), definition()).row is not None

    gone = build_template(schedule(good), None)
    assert gone.row is None and gone.skip is not None
    assert gone.skip[0] == SKIP_DEFINITION and "'orders'" in gone.skip[1]

    stale = build_template(schedule({"taskDefinitionId": "orders", "input": {}}), definition())
    assert stale.row is None and stale.skip is not None and stale.skip[0] == SKIP_INPUT
    assert "2.1.0" in stale.skip[1] and "orderId" in stale.skip[1]

    odd = build_template(schedule({**good, "priority": "URGENT"}), definition())
    assert odd.row is None and odd.skip is not None and odd.skip[0] == SKIP_TEMPLATE


def every(ms: int) -> Timing:
    return Timing(cron=None, interval_ms=ms, timezone="UTC", anchor=T0)


def test_an_edit_keeps_a_due_slot_not_yet_fired() -> None:
    now = T0 + timedelta(milliseconds=400)  # the T0 slot is due, the sweeper not there yet
    assert next_run_after_edit(every(60_000), T0, now) == T0
    # A new timing keeps its first slot at or after the pending one.
    assert next_run_after_edit(every(7_000), T0 - timedelta(seconds=1), now) == T0


def test_an_edit_without_a_due_slot_waits_for_the_next_after_now() -> None:
    now = T0 + timedelta(seconds=30)
    assert next_run_after_edit(every(60_000), T0 + timedelta(minutes=1), now) == T0 + timedelta(
        minutes=1
    )
    assert next_run_after_edit(every(60_000), None, now) == T0 + timedelta(minutes=1)
    # A pending slot the new timing ends before: nothing more to fire.
    ended = Timing(cron=None, interval_ms=60_000, timezone="UTC", anchor=T0, end_at=T0)
    assert next_run_after_edit(ended, T0 + timedelta(minutes=1), now) is None
