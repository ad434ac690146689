"""Concurrency limits in the ledger: what counts against a limit, and the tasks held back by one.

Counting is over the partial indexes of migration 0009, which hold limited tasks only
(RUNNING, or sent to a worker and not yet claimed), so a count costs what the limit allows,
never what waits behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.concurrency import DEFINITION, KEY, Limit, limits_of
from shared.store._rows import Conn, Cursor, all_
from shared.store.tasks import RELEASE_CHANNEL

#: A task under at least one limit.
LIMITED = "(definition_limit IS NOT NULL OR concurrency_key IS NOT NULL OR owner_limit IS NOT NULL)"
#: What counts against a limit when deciding whether to send another task: RUNNING, or already
#: sent (a message on its way to a worker). The claim counts RUNNING alone.
ADMITTED = (
    "(status = 'RUNNING' OR (status IN ('PENDING', 'RETRYING') AND published_at IS NOT NULL))"
)
#: The payload of the NOTIFY that says a limit may have room again.
ROOM = "room"


def _counted(limit: Limit, admitted: str) -> tuple[str, list[Any]]:
    """The WHERE clause of the tasks that count against `limit` (and its parameters)."""
    if limit.kind == DEFINITION:
        return (
            f"task_definition_id = %s AND definition_limit IS NOT NULL AND {admitted}",
            [limit.definition],
        )
    if limit.kind == KEY:
        return f"owner = %s AND concurrency_key = %s AND {admitted}", [limit.owner, limit.key]
    return f"owner = %s AND owner_limit IS NOT NULL AND {admitted}", [limit.owner]


def admitted_counts(cur: Cursor, limits: Sequence[Limit]) -> dict[str, int]:
    """How many tasks count against each limit now (RUNNING or sent), by limit name."""
    unique = {limit.name: limit for limit in limits}
    if not unique:
        return {}
    arms, params = [], []
    for name, limit in unique.items():
        clause, values = _counted(limit, ADMITTED)
        arms.append(f"SELECT %s, count(*) FROM tasks WHERE {clause}")
        params += [name, *values]
    cur.execute(" UNION ALL ".join(arms), params)
    return {str(row[0]): int(row[1]) for row in cur.fetchall()}


@dataclass(frozen=True)
class HeldLimit:
    """A limit some waiting tasks are held back by, with the columns of its first one."""

    held_on: str
    owner: str
    task_definition_id: str
    definition_limit: int | None
    concurrency_key: str | None
    key_limit: int | None
    owner_limit: int | None

    def limit(self) -> Limit | None:
        """The limit itself (as its first held task carries it)."""
        for limit in limits_of(
            owner=self.owner,
            task_definition_id=self.task_definition_id,
            definition_limit=self.definition_limit,
            concurrency_key=self.concurrency_key,
            key_limit=self.key_limit,
            owner_limit=self.owner_limit,
        ):
            if limit.name == self.held_on:
                return limit
        return None


_HELD_COLUMNS = (
    "held_on, owner, task_definition_id, definition_limit, concurrency_key, key_limit, owner_limit"
)
_HELD = "held_on IS NOT NULL AND status IN ('PENDING', 'RETRYING')"


def held_limits(conn: Conn, most: int = 1000) -> list[HeldLimit]:
    """Every limit holding tasks back (up to `most`): one index probe per limit (a skip scan)."""
    with conn.cursor() as cur:
        cur.execute(
            f"""
            WITH RECURSIVE h AS (
                (SELECT {_HELD_COLUMNS} FROM tasks WHERE {_HELD}
                 ORDER BY held_on, owner, priority DESC, created_at LIMIT 1)
                UNION ALL
                SELECT n.* FROM h, LATERAL (
                    SELECT {_HELD_COLUMNS} FROM tasks t
                    WHERE t.held_on > h.held_on AND t.status IN ('PENDING', 'RETRYING')
                    ORDER BY t.held_on, t.owner, t.priority DESC, t.created_at LIMIT 1) n
            )
            SELECT * FROM h LIMIT %s
            """,
            (most,),
        )
        return all_(cur, HeldLimit)


def let_go(conn: Conn, held_on: str, count: int) -> int:
    """Return up to `count` tasks held by `held_on` to the ready set: the first of each owner.

    One task per owner, the owners whose first held task is oldest first, so one owner's
    backlog under a shared limit (a definition's) does not starve another's.
    """
    if count <= 0:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            f"""
            WITH RECURSIVE o AS (
                (SELECT owner FROM tasks WHERE held_on = %(name)s AND {_HELD}
                 ORDER BY owner LIMIT 1)
                UNION ALL
                SELECT (SELECT t.owner FROM tasks t WHERE t.held_on = %(name)s
                          AND t.status IN ('PENDING', 'RETRYING') AND t.owner > o.owner
                        ORDER BY t.owner LIMIT 1)
                FROM o WHERE o.owner IS NOT NULL
            ), firsts AS (
                SELECT f.id, f.priority, f.created_at FROM o, LATERAL (
                    SELECT id, priority, created_at FROM tasks t
                    WHERE t.held_on = %(name)s AND t.owner = o.owner
                      AND t.status IN ('PENDING', 'RETRYING')
                    ORDER BY t.priority DESC, t.created_at LIMIT 1) f
                WHERE o.owner IS NOT NULL
            )
            UPDATE tasks SET held_on = NULL
            WHERE id IN (SELECT id FROM firsts ORDER BY priority DESC, created_at LIMIT %(n)s)
              AND held_on = %(name)s
            """,
            {"name": held_on, "n": count},
        )
        return int(cur.rowcount)


def hold(conn: Conn, holds: Sequence[tuple[Any, str]]) -> None:
    """Hold waiting tasks back, each by the full limit named with it; they have no message."""
    if holds:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks t SET held_on = h.name, published_at = NULL"
                " FROM unnest(%s::uuid[], %s::text[]) AS h(id, name)"
                " WHERE t.id = h.id AND t.status IN ('PENDING', 'RETRYING')",
                ([str(i) for i, _ in holds], [n for _, n in holds]),
            )


#: Whether tasks are held back by one of the limits of the task row `{t}` (three probes of
#: tasks_held): only then does the end of its run need to wake the releaser.
HELD_BEHIND = (
    "EXISTS (SELECT 1 FROM tasks h WHERE h.status IN ('PENDING', 'RETRYING') AND h.held_on IN"
    " ('definition:' || {t}.task_definition_id, 'key:' || {t}.owner || ':' || {t}.concurrency_key,"
    " 'principal:' || {t}.owner))"
)


def wake_releaser(cur: Cursor, task_id: Any = None) -> None:
    """Tell the releaser that a limit may have room (sent at commit; at once in autocommit).

    With `task_id`: only if tasks are held back by one of that task's limits.
    """
    if task_id is None:
        cur.execute("SELECT pg_notify(%s, %s)", (RELEASE_CHANNEL, ROOM))
        return
    cur.execute(
        f"SELECT pg_notify(%s, %s) FROM tasks t WHERE t.id = %s AND {HELD_BEHIND.format(t='t')}",
        (RELEASE_CHANNEL, ROOM, task_id),
    )
