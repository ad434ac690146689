"""Status vocabulary: the terminal set, which moves are allowed, priorities and broker order."""

from __future__ import annotations

import re
from itertools import product
from pathlib import Path

import pytest

from config.celery import celery_settings
from config.settings import Settings
from shared.status import (
    ACTIVE,
    ALLOWED_FROM,
    CLAIMABLE,
    TERMINAL,
    ErrorKind,
    Priority,
    Status,
    TaskType,
    can_move,
)

S = Status
# Every allowed (from, to) move, written out so a change to the table is a deliberate one.
EXPECTED_MOVES = {
    (S.PENDING, S.RUNNING),
    (S.RETRYING, S.RUNNING),
    (S.RUNNING, S.RETRYING),
    (S.RUNNING, S.COMPLETED),
    (S.PENDING, S.COMPLETED),  # a manual task completed through the API
    (S.RUNNING, S.FAILED),
    (S.RETRYING, S.FAILED),
    (S.PENDING, S.FAILED),
    (S.RUNNING, S.TIMED_OUT),
    (S.RETRYING, S.TIMED_OUT),
    (S.PENDING, S.TIMED_OUT),
    (S.PENDING, S.CANCELLED),
    (S.RUNNING, S.CANCELLED),
    (S.RETRYING, S.CANCELLED),
}


def test_the_seven_statuses_of_the_contract():
    assert [s.value for s in Status] == [
        "PENDING",
        "RUNNING",
        "RETRYING",
        "COMPLETED",
        "FAILED",
        "TIMED_OUT",
        "CANCELLED",
    ]


def test_terminal_set():
    assert TERMINAL == {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED}
    assert ACTIVE == {S.PENDING, S.RUNNING, S.RETRYING}
    assert CLAIMABLE == {S.PENDING, S.RETRYING}
    assert all(s.terminal for s in TERMINAL)
    assert not any(s.terminal for s in ACTIVE)


def test_the_move_table_is_exactly_the_expected_one():
    allowed = {(a, b) for a, b in product(Status, Status) if can_move(a, b)}
    assert allowed == EXPECTED_MOVES
    assert set(ALLOWED_FROM) == set(Status)


@pytest.mark.parametrize(("current", "new"), list(product(TERMINAL, Status)))
def test_nothing_leaves_a_terminal_status(current, new):
    # A late event (a slow worker's result, a duplicate message) can never undo an ending.
    assert not can_move(current, new)


def test_nothing_moves_back_to_pending_and_every_active_task_can_be_cancelled():
    assert not any(can_move(s, S.PENDING) for s in Status)
    assert all(can_move(s, S.CANCELLED) for s in ACTIVE)


def test_statuses_match_the_database_constraint():
    sql = (Path(__file__).resolve().parents[2] / "shared/migrations/0001_initial.sql").read_text()
    check = re.search(r"CHECK \(status IN\s*\(([^)]*)\)", sql)
    assert check is not None
    assert re.findall(r"'([A-Z_]+)'", check.group(1)) == [s.value for s in Status]


def test_priority_ranks_grow_with_urgency():
    assert [p.rank for p in (Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL)] == [
        0,
        1,
        2,
        3,
    ]


def test_broker_priority_serves_critical_first():
    # Celery's Redis transport serves the lowest number first, on steps 0..9.
    assert Priority.CRITICAL.broker_priority == 0
    assert Priority.LOW.broker_priority == 9
    ordered = [p.broker_priority for p in sorted(Priority, key=lambda p: p.rank)]
    assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) == 4
    assert all(0 <= n <= 9 for n in ordered)


def test_default_celery_priority_is_medium():
    config = celery_settings(Settings("postgresql://x/y", "redis://x"))
    assert config["task_default_priority"] == Priority.MEDIUM.broker_priority
    assert config["broker_transport_options"]["priority_steps"] == list(range(10))


@pytest.mark.parametrize(("rank", "expected"), [(-5, 9), (0, 9), (1, 6), (2, 3), (3, 0), (99, 0)])
def test_stored_ranks_map_to_broker_priorities_clamped(rank, expected):
    assert Priority.from_rank(rank).broker_priority == expected


def test_types_and_error_kinds_of_the_contract():
    assert {t.value for t in TaskType} == {"AUTOMATED", "MANUAL", "INTEGRATION"}
    assert {k.value for k in ErrorKind} == {
        "TASK_ERROR",
        "OUT_OF_MEMORY",
        "WORKER_LOST",
        "INTERNAL",
    }
