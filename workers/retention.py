"""The purge: the sweeper's thread that deletes finished tasks past their retention, paced."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from config.settings import Settings
from shared import store
from shared.db import Database
from shared.errors import TaskexecError
from shared.retention import Retention

log = logging.getLogger(__name__)
#: Tasks one purge statement deletes at most: its CPU (about 10 ms) and WAL (about 300 KB) come
#: in small, evenly spaced pieces that submits and claims do not queue behind.
PURGE_BATCH = 500
#: The first span of end times a batch covers (seconds); each batch adapts it (next_span).
FIRST_SPAN = 60.0
#: What the span aims at: this share of PURGE_BATCH under the horizon, so that a denser stretch
#: of end times seldom finds more than one batch takes (the rest waits for the next batch).
SPAN_AIM = 0.9


class Pacer:
    """Spaces batches so that the purge deletes at most `rate` tasks a second, evenly.

    A batch of n tasks books n / rate seconds from when it was due (or started, if later);
    the next one waits for the end of that booking. Time a slow batch took is not made up by
    a burst afterwards: the booking starts again from now.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._due = -math.inf

    def wait(self, started: float, deleted: int) -> float:
        """Seconds to wait after a batch that started at `started` and deleted `deleted` tasks."""
        self._due = max(self._due, started) + deleted / self.rate
        return max(0.0, self._due - self.clock())


def next_span(span: float, found: int, limit: int) -> float:
    """The span of end times the next batch covers, after one that found `found` expired tasks
    under its horizon.

    Tasks end at a rate that changes slowly, so scaling the span by how far `found` fell short
    of (or passed) SPAN_AIM of `limit` converges in a few batches; a factor of two a step at
    most, so that a gap or a burst in end times does not throw it far.
    """
    factor = min(2.0, max(0.5, SPAN_AIM * limit / max(found, 1)))
    return min(max(span * factor, 1e-3), 400 * 86400.0)


class Purger:
    """Deletes expired tasks in small, paced batches; one sweeper of the fleet purges at a time."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.retention = Retention.from_settings(settings)
        self.batch = PURGE_BATCH
        self.rate = settings.purge_rate
        self.span = FIRST_SPAN

    def purge(self, stop: threading.Event) -> int:
        """Delete batches, oldest expired tasks first, until none is left or `stop` is set.

        Under the fleet's purge lock, held by this connection's session for the whole run: a
        second sweeper finds it taken and leaves the backlog to the first, so the pacing
        bounds the database's load however many sweepers run (and two never fight over the
        same rows). The lock dies with the session if this process does.
        """
        total = 0
        pacer = Pacer(self.rate)
        # Where the last batch started: everything expired before it is gone, so the next
        # batch's probes start there instead of stepping over the entries of the tasks this
        # run deleted (vacuum has not removed them yet), which made each batch slower than the
        # one before (48,000 rows per CPU-second fell to 22,000 over a million). Each run
        # starts from the beginning: a task that expired meanwhile with an earlier end time
        # (unpinned, or of a class kept longer) is found by the next run.
        after = None
        with self.db.connection() as conn:
            if not store.try_lock_purge(conn):
                log.debug("purge skipped: another sweeper is purging")
                return 0
            conn.commit()
            try:
                while not stop.is_set():
                    started = pacer.clock()
                    # Read each batch: a definition published since with its own retention
                    # counts.
                    classes = self.retention.classes(store.definition_retentions(conn))
                    done = store.purge_expired_tasks(conn, classes, self.batch, self.span, after)
                    conn.commit()
                    after = done.oldest
                    total += done.deleted
                    if done.covered and done.deleted < self.batch:
                        break  # the horizon passed every cutoff: nothing expired is left
                    self.span = next_span(self.span, done.found, self.batch)
                    stop.wait(pacer.wait(started, done.deleted))
            finally:
                try:
                    conn.rollback()
                    store.unlock_purge(conn)
                except Exception:
                    # Never hand the pool a session that may still hold the lock: closed, the
                    # server releases it.
                    conn.close()
                    raise
        if total:
            log.info("purged %d task(s) past their retention", total)
        return total

    def run_forever(self, stop: threading.Event) -> None:
        """Purge every TASKEXEC_PURGE_INTERVAL seconds until `stop` is set; survive outages."""
        while not stop.is_set():
            try:
                self.purge(stop)
            except TaskexecError as exc:
                log.warning("purge skipped: %s", exc.message)
            except Exception:
                log.exception("purge failed")
            stop.wait(self.settings.purge_interval)
