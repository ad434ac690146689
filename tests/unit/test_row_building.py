"""Rows built without their dataclass __init__ (the store's row classes, a task from its webhook
snapshot) are the objects __init__ builds; times render as they always did."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import random
import types
import typing
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

import pytest

import shared.store
from shared.status import Status
from shared.store import Task, _rows
from shared.task_document import rfc3339, task_from_snapshot, task_json


@dataclass(frozen=True)
class Column:
    name: str


class FakeCursor:
    def __init__(self, columns: list[str], rows: list[Any]) -> None:
        self.description = [Column(c) for c in columns]
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows


def row_classes() -> list[type]:
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(shared.store.__path__):
        module = importlib.import_module(f"shared.store.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
            ):
                try:
                    typing.get_type_hints(value)
                except NameError:
                    continue  # not a row (a type only named for the checker): not built here
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def sample(hint: Any, rng: random.Random) -> Any:
    """A value of the type `hint` names (None half the time when it is optional)."""
    kind = hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if type(None) in typing.get_args(hint) and rng.random() < 0.5:
            return None
        kind = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(kind) is not None:
        kind = typing.get_origin(kind)
    if kind is dict:
        return {"key": rng.randint(0, 9)}
    if kind is list:
        return [rng.randint(0, 9)]
    if kind is uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128))
    if kind is datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.getrandbits(40))
    if isinstance(kind, type) and issubclass(kind, Enum):
        return rng.choice(list(kind)).value  # stored as text
    if kind is bool:
        return rng.random() < 0.5
    if kind is int:
        return rng.randint(0, 10**6)
    if kind is float:
        return rng.random()
    if kind is str:
        return f"s{rng.randint(0, 999)}"
    return {"any": rng.randint(0, 9)}


@pytest.mark.parametrize("cls", row_classes(), ids=lambda c: c.__qualname__)
@pytest.mark.parametrize("as_dicts", [False, True], ids=["tuples", "dicts"])
def test_every_row_class_builds_as_its_init_would(cls: type, as_dicts: bool) -> None:
    rng = random.Random(cls.__qualname__)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for columns in (["extra", *names], list(reversed(names))):
        raw = [sample(hints[n], rng) if n != "extra" else 1 for n in columns]
        row: Any = dict(zip(columns, raw, strict=True)) if as_dicts else tuple(raw)
        built = _rows.one(FakeCursor(columns, [row]), cls)  # type: ignore[arg-type]
        expected = _rows._make(cls, _rows._plan(cls, FakeCursor(columns, [])), row)  # type: ignore[arg-type]
        assert built == expected and type(built) is cls
        assert {k: getattr(built, k) for k in names} == {k: getattr(expected, k) for k in names}
        assert repr(built) == repr(expected)
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.__setattr__(names[0], None)
    # The row classes of the store are all built this way (the point of it).
    assert _rows._fillable(cls)


@dataclass(frozen=True)
class WithDefaults:
    a: int
    status: Status = Status.PENDING
    b: str = "b"


@dataclass(frozen=True)
class WithFactory:
    a: int
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WithPostInit:
    a: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", self.a * 2)


@dataclass(frozen=True, slots=True)
class WithSlots:
    a: int


def build(cls: type, columns: list[str], row: tuple[Any, ...]) -> Any:
    return _rows.all_(FakeCursor(columns, [row]), cls)[0]  # type: ignore[arg-type]


def test_missing_columns_take_defaults_and_others_go_through_init() -> None:
    assert build(WithDefaults, ["a"], (1,)) == WithDefaults(1)
    assert build(WithDefaults, ["status", "a"], ("FAILED", 1)).status is Status.FAILED
    assert build(WithFactory, ["a"], (1,)).tags == []
    assert build(WithPostInit, ["a"], (2,)).a == 4
    assert build(WithSlots, ["a"], (3,)) == WithSlots(3)
    with pytest.raises(TypeError):
        build(WithDefaults, ["b"], ("x",))  # `a` has no column: __init__ says so
    assert not _rows._fillable(WithPostInit) and not _rows._fillable(WithSlots)


def test_make_builds_with_every_field_or_through_init() -> None:
    assert _rows.make(WithDefaults, {"a": 1, "status": None, "b": "c"}) == WithDefaults(
        1, None, "c"
    )
    assert _rows.make(WithDefaults, {"a": 1}) == WithDefaults(1)  # defaults: __init__
    with pytest.raises(TypeError):
        _rows.make(WithDefaults, {"a": 1, "status": Status.FAILED, "b": "c", "d": 1})
    assert _rows.make(WithPostInit, {"a": 1}).a == 2


def full_task(rng: random.Random) -> Task:
    hints = typing.get_type_hints(Task)
    values = {f.name: sample(hints[f.name], rng) for f in fields(Task)}
    values["status"] = Status(values["status"])
    return Task(**values)


def snapshot_of(task: Task) -> dict[str, Any]:
    """What to_jsonb gives for the row, read back by json.loads."""

    def text(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, uuid.UUID | Enum):
            return str(value.value if isinstance(value, Enum) else value)
        return value

    doc = {f.name: text(getattr(task, f.name)) for f in fields(Task)}
    doc["a_column_task_does_not_have"] = 1
    return typing.cast(dict[str, Any], json.loads(json.dumps(doc)))


def test_a_snapshot_gives_back_the_task() -> None:
    rng = random.Random(15)
    for _ in range(200):
        task = full_task(rng)
        rebuilt = task_from_snapshot(snapshot_of(task))
        assert rebuilt == task
        assert json.dumps(task_json(rebuilt, [], [])) == json.dumps(task_json(task, [], []))


def test_an_older_snapshot_takes_the_defaults() -> None:
    task = full_task(random.Random(1))
    snapshot = snapshot_of(task)
    del snapshot["pinned"], snapshot["retry_of"], snapshot["held_on"]
    rebuilt = task_from_snapshot(snapshot)
    assert rebuilt == dataclasses.replace(task, pinned=False, retry_of=None, held_on=None)


def test_times_render_as_before() -> None:
    rng = random.Random(3)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None]
    for _ in range(5000):
        value = datetime(2026, 1, 1, tzinfo=rng.choice(zones)) + timedelta(
            microseconds=rng.getrandbits(50) - 2**49
        )
        if rng.random() < 0.2:
            value = value.replace(microsecond=rng.choice([0, 999, 1000, 999999]))
        old = value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert rfc3339(value) == old
    assert rfc3339(None) is None
