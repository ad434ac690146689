"""Group commit: concurrent plain submissions of one process share an INSERT and a publish."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from shared import store
from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)

#: Stores rows in one statement and commits; returns them as stored.
Flush = Callable[[Sequence[store.NewTask]], list[store.Task]]
#: Publishes committed tasks (what it cannot send is left to the sweeper).
Publish = Callable[[Sequence[store.Task]], None]


class _Entry:
    """One request's rows, what became of them, and the lock its thread waits on."""

    __slots__ = ("rows", "tasks", "error", "batch", "wake")

    def __init__(self, rows: Sequence[store.NewTask]) -> None:
        self.rows = rows
        self.tasks: list[store.Task] = []
        self.error: BaseException | None = None
        # The batch this request is to lead (its own first); None while it only waits.
        self.batch: list[_Entry] | None = None
        # Held from the start; released once: when the request's batch is done, or when it
        # is handed the next batch to lead. The cheapest wake-up there is (a lock, not an
        # Event), and only this request's thread wakes.
        self.wake = threading.Lock()
        self.wake.acquire()

    def result(self) -> list[store.Task]:
        if self.error is not None:
            raise self.error
        return self.tasks


class GroupCommit:
    """Leader/follower batching of submissions without idempotency keys.

    The first request to arrive while no batch is being written leads: it takes every row
    waiting at that moment (its own included), writes them with one INSERT and one commit,
    publishes them in one pipeline, and hands each request its tasks. Requests that arrive
    meanwhile wait, and when the leader is done the oldest of them leads the next batch. An
    idle server thus writes each request at once (no timer, no added latency), and a busy one
    pays one round trip to Postgres, one commit (one WAL flush) and one to Redis per batch
    instead of per request. Each request still answers only after its own rows were committed.

    The leader passes its turn once the batch is committed and publishes it after that: the
    next batch's INSERT (and its wait for the WAL flush) goes on meanwhile instead of after it.
    Each waiting thread is woken once, by name (its own lock): the next leader when handed its
    batch, a follower when its batch is done. A shared condition woken for everyone made every
    waiting thread of the process take the GIL twice per batch only to wait again (11 % of the
    API's CPU under load was in this module).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Entry] = []
        self._writing = False

    def submit(
        self, rows: Sequence[store.NewTask], flush: Flush, publish: Publish | None = None
    ) -> list[store.Task]:
        """Store `rows` in one batch with whatever else is waiting, then publish the batch.

        `flush` writes a batch and `publish` sends it; every caller passes the same ones (a
        leader uses its own). Each request answers once its batch was committed and published.
        """
        entry = _Entry(rows)
        with self._lock:
            self._pending.append(entry)
            if not self._writing:
                self._writing = True
                entry.batch, self._pending = self._pending, []
        if entry.batch is None:
            entry.wake.acquire()  # a batch's leader wakes it: done, or to lead the next
            if entry.batch is None:
                return entry.result()  # a leader wrote it
        batch = entry.batch
        try:
            try:
                self._write(batch, flush)
            finally:
                self._pass_turn()
            if publish is not None:
                _publish(batch, publish)
        finally:
            for done in batch:
                if done is not entry:
                    done.wake.release()
        return entry.result()

    def _pass_turn(self) -> None:
        """Hand the rows waiting now to the oldest of their requests, which leads them next."""
        with self._lock:
            if not self._pending:
                self._writing = False
                return
            following = self._pending[0]
            following.batch, self._pending = self._pending, []  # still writing: its turn
        following.wake.release()

    def _write(self, batch: list[_Entry], flush: Flush) -> None:
        try:
            tasks = flush([row for entry in batch for row in entry.rows])
        except ServiceUnavailable as exc:  # an outage refuses every request of the batch
            for entry in batch:
                entry.error = exc
        except Exception as exc:  # noqa: BLE001 - handed to the requests that sent the rows
            if len(batch) == 1:
                batch[0].error = exc
            else:
                # Not an outage but something about the rows: write each request alone, so
                # one bad request fails by itself and not its neighbours in the batch.
                for entry in batch:
                    self._write_alone(entry, flush)
        except BaseException as exc:  # the process is exiting: no waiting request hangs
            for entry in batch:
                entry.error = exc
            raise
        else:
            for entry in batch:
                entry.tasks = _in_order(entry.rows, tasks)

    @staticmethod
    def _write_alone(entry: _Entry, flush: Flush) -> None:
        try:
            entry.tasks = _in_order(entry.rows, flush(entry.rows))
        except Exception as exc:  # noqa: BLE001 - handed to the request that sent the rows
            entry.error = exc


def _publish(batch: list[_Entry], publish: Publish) -> None:
    """Publish the batch's committed tasks; a failure leaves them to the sweeper, as stamped."""
    tasks = [task for entry in batch if entry.error is None for task in entry.tasks]
    if not tasks:
        return
    try:
        publish(tasks)
    except Exception:  # noqa: BLE001 - committed: still accepted, the sweeper republishes them
        log.exception("publishing %d committed task(s) failed; left for the sweeper", len(tasks))


def _in_order(rows: Sequence[store.NewTask], tasks: list[store.Task]) -> list[store.Task]:
    """A request's stored tasks in the order of its rows (RETURNING promises no order)."""
    stored = {task.id: task for task in tasks}
    return [stored[row.id] for row in rows]
