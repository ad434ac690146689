"""Connections, cursors and the one typed row mapper every query of the store returns through."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Sequence
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


def dict_cursor(conn: Conn) -> psycopg2.extras.RealDictCursor:
    """A cursor whose rows are dicts keyed by column name (for callers that read rows by hand)."""
    return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def one(cur: Cursor, cls: type[T]) -> T | None:
    """Build `cls` from the next row of `cur`; None when there is none."""
    row = cur.fetchone()
    if row is None:
        return None
    return _make(cls, _plan(cls, cur), row)


def all_(cur: Cursor, cls: type[T]) -> list[T]:
    """Build `cls` from every remaining row of `cur`."""
    rows = cur.fetchall()
    if not rows:
        return []
    plan = _plan(cls, cur)
    return [_make(cls, plan, row) for row in rows]


def scalar(cur: Cursor, kind: type[V]) -> V:
    """The first column of the one row a query always returns (an aggregate), checked as `kind`."""
    row = cur.fetchone()
    assert row is not None
    value = next(iter(row.values())) if isinstance(row, dict) else row[0]
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, the query returned {value!r}")
    return value


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


def statuses(members: Iterable[Status]) -> list[str]:
    """A set of statuses as the text array a `status = ANY(%s)` guard takes."""
    return sorted(s.value for s in members)
