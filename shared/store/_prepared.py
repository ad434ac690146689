"""Statements run for every task or delivery, prepared once per autocommit connection."""

from __future__ import annotations

import re
import time
import weakref
from typing import Any

import psycopg2
import psycopg2.errors

from shared.store._rows import Conn, Cursor

#: A prefix for a statement whose plan depends on its parameters' values (a LIMIT, an array's
#: length): planned afresh each run (parsing is still saved). Postgres otherwise switches to
#: a generic plan after five runs, made without the values: with the deliverer's claim and
#: outcome statements on generic plans (chosen while the tables were nearly empty), a backlog
#: of 20,000 deliveries drained at 117/s instead of 1,704/s (its Postgres: 5.9 ms per delivery).
CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan;"

#: A run slower than this marks its statement for preparing again (its plans made afresh),
#: which happens at its next run once it ran REPREPARE_AFTER times since it was prepared.
#: Postgres makes a generic plan after five runs and keeps it until an ANALYZE of its tables
#: (autovacuum's) invalidates it, and an invalidation makes the next plan from the table as it
#: is then. One made while `tasks` was nearly empty (a fresh install, a truncated table, a
#: statement invalidated by a VACUUM just then) scans the whole table, a sequential scan or,
#: with those off, a full scan of another index holding the id, and with autovacuum off (as
#: on the test machine) nothing replaced it: 2-3 ms of Postgres CPU per task claim at 5,000
#: rows, the bench's throughput halved (271 against 532 tasks/s). Such a plan shows as slow
#: runs, and is replaced within REPREPARE_AFTER runs; a healthy one never is. Planning every
#: run instead (force_custom_plan) cost 0.2 ms of Postgres CPU per claim and 0.16 per finish;
#: preparing again costs one round trip and five planned runs, at most once per 64 runs.
SLOW_RUN_SECONDS = 0.001
REPREPARE_AFTER = 64


class _State:
    """A statement prepared on one connection: runs since it was prepared, whether one was
    slow, and how often it was prepared there (for tests)."""

    __slots__ = ("since", "slow", "prepares")

    def __init__(self) -> None:
        self.since = 0
        self.slow = False
        self.prepares = 1


class Prepared:
    """A hot statement, prepared once per autocommit connection.

    Postgres then parses and plans it once per connection, not once per run: in the profile
    the worker's claim and finish cost their backends 1.75 ms of CPU per task, 0.6 ms prepared,
    and the worker a third less (a short EXECUTE to format and send instead of the whole text).

    A connection inside a transaction runs the plain text, as does every connection of a
    process once the server refused a prepared statement in a way that says a pooler sits in
    between (PgBouncer in transaction mode hands each statement to any server connection, so
    one prepared on one is missing on the next): correctness never depends on preparing.

    `prefix` (say "SET LOCAL enable_sort = off;") is sent with every run, in the same simple
    query, so it holds for the statement's implicit transaction, and for its planning too: a
    prepared statement is planned when executed.

    `slow_seconds` is the run time past which the plan is suspect (SLOW_RUN_SECONDS unless
    given): a statement whose runs legitimately take longer gets a bound above them, or it
    would be prepared again every REPREPARE_AFTER runs for nothing.
    """

    #: Process-wide: set once a prepared statement went missing or was already there.
    plain_only = False
    #: The statements prepared on each live connection, by name (forgotten with the connection).
    done: weakref.WeakKeyDictionary[Conn, dict[str, _State]] = weakref.WeakKeyDictionary()

    def __init__(
        self,
        name: str,
        plain: str,
        types: dict[str, str],
        prefix: str = "",
        slow_seconds: float = SLOW_RUN_SECONDS,
    ) -> None:
        self.name = name
        self.slow_seconds = slow_seconds
        self.plain = prefix + plain
        self.params = tuple(types)
        numbered = plain
        for index, param in enumerate(self.params, 1):
            numbered = numbered.replace(f"%({param})s", f"${index}")
        assert not re.search(r"%\(\w+\)s", numbered), f"{name}: a parameter without a type"
        declared = f" ({', '.join(types.values())})" if types else ""
        self.prepare = f"PREPARE {name}{declared} AS {numbered}"
        # Each argument cast to its type: EXECUTE coerces like an assignment, which turns no
        # text[] (a Python list of strings) into a uuid[].
        casts = f" ({', '.join(f'%s::{t}' for t in types.values())})" if types else ""
        self.execute = f"{prefix}EXECUTE {name}{casts}"

    def run(self, cur: Cursor, params: dict[str, Any]) -> None:
        """Execute with `params` (by name), prepared where the connection allows it."""
        conn = cur.connection
        if Prepared.plain_only or not conn.autocommit:
            cur.execute(self.plain, params)
            return
        names = Prepared.done.setdefault(conn, {})
        try:
            state = names.get(self.name)
            if state is None:
                cur.execute(self.prepare)
                state = names[self.name] = _State()
            elif state.slow and state.since >= REPREPARE_AFTER:
                cur.execute(f"DEALLOCATE {self.name}")
                cur.execute(self.prepare)
                state.since, state.slow = 0, False
                state.prepares += 1
            started = time.perf_counter()
            cur.execute(self.execute, [params[p] for p in self.params])
            state.since += 1
            if time.perf_counter() - started > self.slow_seconds:
                state.slow = True
            return
        except (
            psycopg2.errors.InvalidSqlStatementName,  # missing: not the connection we prepared on
            psycopg2.errors.DuplicatePreparedStatement,  # already there: ditto
        ):
            Prepared.plain_only = True
        except psycopg2.errors.FeatureNotSupported:
            # "cached plan must not change result type": a migration changed the table.
            # Prepare afresh next time. Autocommit: the failed statement changed nothing.
            cur.execute(f"DEALLOCATE {self.name}")
            names.pop(self.name, None)
        cur.execute(self.plain, params)
