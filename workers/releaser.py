"""The releaser: sends waiting work to Redis as the dispatch windows open, fairly between owners.

One pass (the sweeper calls it every round, and whenever a NOTIFY or the poll wakes it):
due tasks become ready (a delayed task's time, a retry's backoff), limits with room let
their held-back tasks go, and each executor with ready work gets as many as its window has
room for, round robin across owners (docs/architecture.md, "Release").
"""

from __future__ import annotations

import logging

from config.settings import Settings
from shared import outbox, store
from shared.broker import BROKER_ERRORS, Broker
from shared.db import Database
from shared.window import Window

log = logging.getLogger(__name__)
#: Tasks one executor's round sends at most (one statement, one Redis pipeline).
RELEASE_BATCH = 500
#: Rounds one pass gives an executor at most (more may follow in the next pass).
ROUNDS_PER_PASS = 8


class Releaser:
    """Moves ready work from Postgres to the executors' windows in Redis."""

    def __init__(self, settings: Settings, db: Database, broker: Broker) -> None:
        self.settings = settings
        self.db = db
        self.broker = broker
        self.window = Window(settings, broker)
        # Where each executor's round robin goes on: the last owner served (per process;
        # several releasers each keep their own, and the executor's lock takes turns).
        self._after: dict[str, str] = {}
        #: After a pass: ready work is left that a full window kept back (poll soon).
        self.backlog = False
        #: After a pass: it sent a full batch somewhere (go again at once).
        self.busy = False
        # The executors whose full window kept ready work back in the last pass.
        self._full: list[str] = []

    def release(self, poll: bool = False) -> int:
        """Do one pass; return how many tasks it sent.

        `poll`: a look while the windows that held work back last time may still be full:
        if they all are, the pass ends after one Redis read, without touching Postgres.
        """
        try:
            if poll and self._full and not self._worth_a_round():
                return 0
            with self.db.connection() as conn:
                store.ready_due(conn)
                store.let_held_go(conn)
            with self.db.connection(autocommit=True) as conn:
                executors = store.ready_executors(conn)
            self.backlog = self.busy = False
            self._full = []
            if not executors:
                return 0
            rooms = self.window.room(executors)
        except BROKER_ERRORS as exc:
            # Nothing can be sent while Redis is away; the sweeper's other duties go on.
            log.warning("dispatch windows unreadable, nothing released: %s", exc)
            return 0
        sent = 0
        for executor in executors:
            room = rooms.get(executor, 0)
            for _ in range(ROUNDS_PER_PASS):
                if room <= 0:
                    self.backlog = True
                    self._full.append(executor)
                    break
                released, held = self._round(executor, min(room, RELEASE_BATCH))
                sent += released
                room -= released
                if released == 0 and held == 0:
                    break
                if released >= RELEASE_BATCH or held:
                    self.busy = True  # more may be ready than this pass took
        return sent

    def _worth_a_round(self) -> bool:
        """Whether a full window of the last pass has a quarter of its size free again.

        Refilling in batches, not one message per claim: a poll finds a little room almost
        every time while workers take messages, and a round per message would cost the
        releaser a few statements per task; with three quarters of a window still queued
        the workers never run dry meanwhile.
        """
        rooms = self.window.room(self._full)
        return any(room >= max(1, self.window.size(e) // 4) for e, room in rooms.items())

    def _round(self, executor: str, room: int) -> tuple[int, int]:
        """Send up to `room` ready tasks of one executor; return (sent, held back)."""
        with self.db.connection() as conn:
            release = store.take_ready(conn, executor, room, self._after.get(executor, ""))
        if release.last_owner is not None:
            self._after[executor] = release.last_owner
        if not release.locked:
            self.backlog = True  # another releaser has it now; look again soon
            return 0, 0
        failed = outbox.publish(self.broker, self.db, release.dispatches)
        if release.dispatches:
            log.debug("released %d task(s) to %s", len(release.dispatches) - len(failed), executor)
        return len(release.dispatches) - len(failed), release.held
