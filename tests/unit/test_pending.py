"""pendingReason from a row (shared/pending.py), its list filter, and how the CLI shows it."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cli.output import waiting_label
from shared.concurrency import hold_details, limits_of
from shared.pending import pending_details, pending_reason, reason_clause
from shared.status import PendingReason, Status
from shared.store import Task

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def task(**fields) -> Task:
    base = Task(
        id=uuid.uuid4(),
        owner="alice",
        task_definition_id="echo",
        definition_version="1",
        workflow_instance_id=None,
        type="AUTOMATED",
        status=Status.PENDING,
        priority=1,
        executor="standard-executor",
        input={},
        output=None,
        error=None,
        timeout_ms=1000,
        retry_policy={},
        attempts=0,
        worker_lost_count=0,
        start_time=None,
        end_time=None,
        worker_host=None,
        worker_pid=None,
        lease_expires_at=None,
        next_attempt_at=None,
        published_at=None,
        deadline_at=None,
        cancel_requested_at=None,
        cancel_reason=None,
        cancelled_by=None,
        cancel_force=False,
        progress=None,
        source="tasks",
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(base, **fields)


def test_each_reason_from_the_row():
    live = {"standard-executor"}
    later = NOW + timedelta(minutes=1)
    assert pending_reason(task(), NOW, live) is PendingReason.QUEUED
    assert pending_reason(task(executor="gpu"), NOW, live) is PendingReason.NO_WORKER
    assert pending_reason(task(executor="gpu"), NOW, None) is PendingReason.QUEUED  # unknown
    assert pending_reason(task(next_attempt_at=later), NOW, live) is PendingReason.SCHEDULED
    retrying = task(status=Status.RETRYING, next_attempt_at=later)
    assert pending_reason(retrying, NOW, live) is PendingReason.RETRY_BACKOFF
    assert pending_reason(task(status=Status.RETRYING), NOW, live) is PendingReason.QUEUED
    held = task(held_on="key:alice:c-42", concurrency_key="c-42", key_limit=2)
    assert pending_reason(held, NOW, live) is PendingReason.CONCURRENCY_LIMIT
    assert pending_reason(task(type="MANUAL"), NOW, live) is PendingReason.MANUAL
    for status in (Status.RUNNING, Status.COMPLETED, Status.CANCELLED):
        assert pending_reason(task(status=status), NOW, live) is None


def test_details_name_the_full_limit():
    held = task(held_on="definition:echo", definition_limit=5)
    assert pending_details(held) == {"limit": "definition", "taskDefinitionId": "echo", "max": 5}
    assert pending_details(task(held_on="principal:alice", owner_limit=3)) == {
        "limit": "principal",
        "max": 3,
    }
    assert pending_details(task()) is None
    assert hold_details(
        "key:alice:c",
        task_definition_id="echo",
        concurrency_key="c",
        definition_limit=None,
        key_limit=1,
        owner_limit=None,
    ) == {"limit": "key", "key": "c", "max": 1}


def test_limits_are_named_and_sorted_for_the_lock_order():
    limits = limits_of(
        owner="alice",
        task_definition_id="pay",
        definition_limit=5,
        concurrency_key="c-42",
        key_limit=1,
        owner_limit=10,
    )
    assert [lim.name for lim in limits] == ["definition:pay", "key:alice:c-42", "principal:alice"]
    assert [lim.limit for lim in limits] == [5, 1, 10]
    # A key without a limit is no limit.
    assert (
        limits_of(
            owner="a",
            task_definition_id="d",
            definition_limit=None,
            concurrency_key="k",
            key_limit=None,
            owner_limit=None,
        )
        == []
    )


def test_the_list_filter_mirrors_the_reasons():
    clause, params = reason_clause(["QUEUED", "NO_WORKER"], ["standard-executor"])
    assert clause.count("executor = ANY(%s)") == 2 and params == [["standard-executor"]] * 2
    # Liveness unknown: every due task is QUEUED and none NO_WORKER, as on GET.
    clause, params = reason_clause(["NO_WORKER"], None)
    assert clause == "FALSE" and params == []
    clause, params = reason_clause(["QUEUED"], None)
    assert "executor" not in clause and params == []


def test_the_cli_says_why_a_task_waits():
    assert waiting_label({"pendingReason": None}) is None
    assert waiting_label({"pendingReason": "QUEUED", "queuePosition": 3}) == "QUEUED (position 3)"
    held = {
        "pendingReason": "CONCURRENCY_LIMIT",
        "pendingDetails": {"limit": "key", "key": "c-42", "max": 2},
    }
    assert waiting_label(held) == "CONCURRENCY_LIMIT (key c-42, max 2)"
    assert waiting_label({"pendingReason": "NO_WORKER"}) == "NO_WORKER"
