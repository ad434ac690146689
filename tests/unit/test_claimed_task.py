"""The claim's narrow row: columns of the task, typed as the task's, and limited alike."""

from __future__ import annotations

import typing
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from shared import store
from shared.status import Status
from shared.store import task_claims


def test_every_claimed_column_is_a_task_column_of_the_same_type() -> None:
    task = typing.get_type_hints(store.Task)
    claimed = typing.get_type_hints(store.ClaimedTask)
    assert {name: task[name] for name in claimed} == claimed
    assert task_claims._CLAIMED.split(", ") == [f.name for f in fields(store.ClaimedTask)]


def test_limited_says_what_the_task_says() -> None:
    base: dict[str, Any] = {
        "id": uuid.uuid4(),
        "status": Status.RUNNING,
        "attempts": 1,
        "input": {},
        "timeout_ms": 1000,
        "retry_policy": {},
        "worker_lost_count": 0,
        "owner": "alice",
        "task_definition_id": "echo",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "run_at": None,
        "start_time": None,
    }
    no_limit: dict[str, Any] = {}
    for limits in (
        no_limit,
        {"definition_limit": 2},
        {"concurrency_key": "k", "key_limit": 1},
        {"owner_limit": 3},
    ):
        full: dict[str, Any] = {
            "definition_limit": None,
            "concurrency_key": None,
            "key_limit": None,
            "owner_limit": None,
        }
        claimed = store.ClaimedTask(**base, **(full | limits))
        assert claimed.limited == bool(limits)
