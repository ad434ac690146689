"""Connections, cursors and the one typed row mapper every query of the store returns through."""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from enum import Enum
from typing import Any, TypeVar

import psycopg2.extensions
import psycopg2.extras

from shared.status import Status

Conn = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor

T = TypeVar("T")
V = TypeVar("V")

# For one (row class, column names): (column index, field name, conversion) per field filled.
_Plan = tuple[tuple[int, str, Callable[[Any], Any] | None], ...]
_PLANS: dict[tuple[type, tuple[str, ...]], _Plan] = {}
# For one (row class, column names): the function building an instance from a row.
_BUILDERS: dict[tuple[type, tuple[str, ...]], Callable[[Any], Any]] = {}


def dict_cursor(conn: Conn) -> psycopg2.extras.RealDictCursor:
    """A cursor whose rows are dicts keyed by column name (for callers that read rows by hand)."""
    return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def one(cur: Cursor, cls: type[T]) -> T | None:
    """Build `cls` from the next row of `cur`; None when there is none."""
    row = cur.fetchone()
    if row is None:
        return None
    built: T = _builder(cls, cur)(row)
    return built


def all_(cur: Cursor, cls: type[T]) -> list[T]:
    """Build `cls` from every remaining row of `cur`."""
    rows = cur.fetchall()
    if not rows:
        return []
    return list(map(_builder(cls, cur), rows))


def scalar(cur: Cursor, kind: type[V]) -> V:
    """The first column of the one row a query always returns (an aggregate), checked as `kind`."""
    row = cur.fetchone()
    assert row is not None
    value = next(iter(row.values())) if isinstance(row, dict) else row[0]
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, the query returned {value!r}")
    return value


def capped_statement(table: str, clause: str) -> str:
    """The count of at most a number of rows (its last parameter) matching `clause`."""
    return f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {clause} LIMIT %s) capped"


def capped_count(
    cur: Cursor, table: str, clause: str, params: Sequence[Any], exact_max: int
) -> tuple[int, bool]:
    """Count the rows of `table` matching `clause`; return (count, exact).

    With `exact_max` > 0 at most `exact_max + 1` rows are counted, and a larger result is the
    planner's estimate (never below `exact_max + 1`): an exact count of a large match walks
    every matching index entry. 0 always counts exactly. For the lists' paging totals.
    """
    if exact_max <= 0:
        cur.execute(f"SELECT count(*) FROM {table} WHERE {clause}", params)
        return scalar(cur, int), True
    cur.execute(capped_statement(table, clause), [*params, exact_max + 1])
    counted = scalar(cur, int)
    if counted <= exact_max:
        return counted, True
    cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE {clause}", params)
    estimate = int(scalar(cur, list)[0]["Plan"]["Plan Rows"])
    return max(estimate, counted), False


def _plan(cls: type, cur: Cursor) -> _Plan:
    """Which columns fill which fields of `cls`, computed once per class and column list.

    Rows are read by position, so dict and tuple cursors build alike; a field typed as an
    enum (a task's `Status`) is converted from its stored text here, once for every query.
    """
    columns = tuple(d.name for d in cur.description or ())
    key = (cls, columns)
    plan = _PLANS.get(key)
    if plan is None:
        hints = typing.get_type_hints(cls)
        wanted = {f.name for f in fields(cls)}
        plan = _PLANS[key] = tuple(
            (i, name, _converter(hints[name])) for i, name in enumerate(columns) if name in wanted
        )
    return plan


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    return hint if isinstance(hint, type) and issubclass(hint, Enum) else None


def _make(cls: type[T], plan: _Plan, row: Sequence[Any] | dict[str, Any]) -> T:
    values = list(row.values()) if isinstance(row, dict) else row
    kwargs: dict[str, Any] = {}
    for index, name, convert in plan:
        value = values[index]
        kwargs[name] = convert(value) if convert is not None and value is not None else value
    return cls(**kwargs)


def _builder(cls: type[T], cur: Cursor) -> Callable[[Any], T]:
    """The function building `cls` from a row of `cur`'s columns, made once per column list."""
    columns = tuple(d.name for d in cur.description or ())
    key = (cls, columns)
    build = _BUILDERS.get(key)
    if build is None:
        plan = _plan(cls, cur)
        defaults = _defaults(cls, {name for _, name, _ in plan})
        if defaults is None:  # built by its __init__ (which raises if a field has no column)
            build = _BUILDERS[key] = lambda row: _make(cls, plan, row)
        else:
            build = _BUILDERS[key] = _filler(
                cls, [i for i, _, _ in plan], [n for _, n, _ in plan], defaults, plan
            )
    return build


def _filler(
    cls: type[T], indexes: list[int], names: list[str], defaults: dict[str, Any], plan: _Plan
) -> Callable[[Any], T]:
    """Build `cls` by filling a new instance's attributes: what its dataclass __init__ does,
    without a call per field (a frozen one sets each through object.__setattr__)."""
    pick: Callable[[Any], tuple[Any, ...]]
    if len(indexes) > 1:
        pick = operator.itemgetter(*indexes)
    else:  # itemgetter of one index gives the item, not a tuple (and of none, nothing)
        pick = lambda r: tuple(r[i] for i in indexes)  # noqa: E731
    converts = tuple((name, convert) for _, name, convert in plan if convert is not None)
    field_names = tuple(names)
    new = object.__new__

    def build(row: Any) -> T:
        if isinstance(row, dict):
            row = list(row.values())
        built = new(cls)
        attributes = built.__dict__
        if defaults:
            attributes.update(defaults)
        attributes.update(zip(field_names, pick(row), strict=True))
        for name, convert in converts:
            value = attributes[name]
            if value is not None:
                attributes[name] = convert(value)
        return built

    return build


def _defaults(cls: type, given: set[str]) -> dict[str, Any] | None:
    """The default of each field of `cls` not in `given`, when `cls` may be built by filling
    its attributes (see _fillable); None when only its __init__ may build it."""
    found = _FILLABLE.get(cls)
    if found is None:
        found = _FILLABLE[cls] = _fillable(cls)
    if not found:
        return None
    defaults: dict[str, Any] = {}
    for spec in fields(cls):
        if spec.name in given:
            continue
        if spec.default is dataclasses.MISSING:
            return None  # a default_factory, or none: __init__ makes it (or says it is missing)
        defaults[spec.name] = spec.default
    return defaults


_FILLABLE: dict[type, bool] = {}


def _fillable(cls: type) -> bool:
    """Whether an instance of `cls` is exactly its fields' values in its __dict__: a dataclass
    with a generated __init__ of its plain fields, no __post_init__, no __slots__."""
    if not dataclasses.is_dataclass(cls) or not isinstance(cls, type):
        return False
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.init or hasattr(cls, "__post_init__"):
        return False
    declared = getattr(cls, "__dataclass_fields__", {})
    plain = fields(cls)
    if len(plain) != len(declared) or not all(f.init for f in plain):
        return False  # InitVar or ClassVar pseudo-fields, or fields __init__ does not take
    return hasattr(object.__new__(cls), "__dict__")


def make(cls: type[T], values: Mapping[str, Any]) -> T:
    """`cls(**values)` for a row class, faster when `values` holds every field of `cls` (its
    attributes are set directly, see _fillable); through its __init__ otherwise."""
    if cls not in _NAMES:
        _NAMES[cls] = _field_names(cls) if _fillable(cls) else None
    names = _NAMES[cls]
    if names is None or values.keys() != names:
        return cls(**values)
    built: T = object.__new__(cls)
    built.__dict__.update(values)
    return built


_NAMES: dict[type, frozenset[str] | None] = {}


def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def statuses(members: Iterable[Status]) -> list[str]:
    """A set of statuses as the text array a `status = ANY(%s)` guard takes."""
    return sorted(s.value for s in members)
