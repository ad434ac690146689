"""Replay: the lock under which a retry by filter picks its tasks and inserts their replays."""

from __future__ import annotations

from shared.store._rows import Conn

#: pg_advisory_xact_lock's key for retries by filter (any fixed 64-bit number no other lock
#: of ours uses): "taskexec replay by filter".
_FILTER_LOCK = 0x7461736B_72706C79


def lock_retries_by_filter(conn: Conn) -> None:
    """Wait for any other retry by filter to commit, until this transaction ends.

    Taken before the candidates are read: under READ COMMITTED the next statement's snapshot
    then sees the replays the previous holder committed, so its tasks no longer match "not
    yet retried" and no task is replayed twice by two filters racing.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_FILTER_LOCK,))
