"""The store's row mapper: typed rows from tuple and dict cursors, statuses as `Status`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from shared.status import Status
from shared.store import _rows
from shared.store.attempts import Attempt
from shared.store.tasks import Task


@dataclass(frozen=True)
class Column:
    name: str


class FakeCursor:
    """What the mapper reads of a psycopg2 cursor: `description`, `fetchone`, `fetchall`."""

    def __init__(self, columns: list[str], rows: list[Any], as_dicts: bool) -> None:
        self.description = [Column(c) for c in columns]
        self._rows = [dict(zip(columns, r, strict=True)) if as_dicts else r for r in rows]

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    status: Status
    note: str | None


@dataclass(frozen=True)
class Plain:
    status: str


ID = uuid.UUID(int=7)


@pytest.mark.parametrize("as_dicts", [False, True], ids=["tuples", "dicts"])
def test_one_builds_a_typed_row_and_ignores_extra_columns(as_dicts: bool) -> None:
    cur: Any = FakeCursor(["extra", "status", "id", "note"], [(1, "RUNNING", ID, None)], as_dicts)
    row = _rows.one(cur, Row)
    assert row == Row(id=ID, status=Status.RUNNING, note=None)
    assert row is not None and type(row.status) is Status
    assert _rows.one(cur, Row) is None  # no further row


@pytest.mark.parametrize("as_dicts", [False, True], ids=["tuples", "dicts"])
def test_all_builds_every_row(as_dicts: bool) -> None:
    rows = [(ID, "PENDING", "a"), (ID, "CANCELLED", None)]
    cur: Any = FakeCursor(["id", "status", "note"], rows, as_dicts)
    built = _rows.all_(cur, Row)
    assert [r.status for r in built] == [Status.PENDING, Status.CANCELLED]
    assert [r.note for r in built] == ["a", None]
    assert _rows.all_(cur, Row) == []


def test_only_enum_fields_are_converted() -> None:
    # An attempt's status may be SUPERSEDED, which is no task status: it stays text.
    cur: Any = FakeCursor(["status"], [("SUPERSEDED",)], as_dicts=False)
    assert _rows.one(cur, Plain) == Plain("SUPERSEDED")
    converted = [name for _, name, convert in _rows._plan(Attempt, _cursor_of(Attempt)) if convert]
    assert converted == []


def test_a_column_order_is_planned_once_per_class() -> None:
    first: Any = FakeCursor(["id", "status", "note"], [], as_dicts=False)
    second: Any = FakeCursor(["note", "id", "status"], [], as_dicts=False)
    assert _rows._plan(Row, first) is _rows._plan(Row, first)
    assert _rows._plan(Row, first) != _rows._plan(Row, second)


def test_scalar_checks_its_type() -> None:
    assert _rows.scalar(FakeCursor(["n"], [(3,)], as_dicts=True), int) == 3  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _rows.scalar(FakeCursor(["n"], [("3",)], as_dicts=False), int)  # type: ignore[arg-type]


def test_a_task_row_converts_its_status_and_nothing_else() -> None:
    converted = {
        name: convert for _, name, convert in _rows._plan(Task, _cursor_of(Task)) if convert
    }
    assert converted == {"status": Status}


def test_status_sets_go_to_sql_as_sorted_text() -> None:
    assert _rows.statuses({Status.RETRYING, Status.PENDING}) == ["PENDING", "RETRYING"]


def _cursor_of(cls: type) -> Any:
    return FakeCursor(list(cls.__dataclass_fields__), [], as_dicts=False)
