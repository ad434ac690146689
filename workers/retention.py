"""The purge: the sweeper's thread that deletes finished tasks past their retention, paced."""

from __future__ import annotations

import logging
import threading
import time

from config.settings import Settings
from shared import store
from shared.db import Database
from shared.errors import TaskexecError
from shared.retention import Retention

log = logging.getLogger(__name__)
#: Tasks one purge statement deletes at most: short enough that its locks (the deleted rows
#: only, never the table) and its WAL burst go unnoticed by submits and claims.
PURGE_BATCH = 1000
#: After a full batch, sleep this many times as long as it took: the purge then holds the
#: database at most 1 / (1 + ratio) of the time however large the backlog, leaving the rest to
#: everything else (docs/benchmarks.md, Retention: at 0.5, 0.25 and 0.1 submit p99 did not
#: move over a million-row purge).
PAUSE_RATIO = 0.25


class Purger:
    """Deletes expired tasks in small batches; one sweeper of the fleet purges at a time."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.retention = Retention.from_settings(settings)
        self.batch = PURGE_BATCH
        self.pause_ratio = PAUSE_RATIO

    def purge(self, stop: threading.Event) -> int:
        """Delete batches until none is full (the backlog is gone) or `stop` is set.

        Under the fleet's purge lock, held by this connection's session for the whole run: a
        second sweeper finds it taken and leaves the backlog to the first, so the pacing
        bounds the database's load however many sweepers run (and two never fight over the
        same rows). The lock dies with the session if this process does.
        """
        total = 0
        with self.db.connection() as conn:
            if not store.try_lock_purge(conn):
                log.debug("purge skipped: another sweeper is purging")
                return 0
            conn.commit()
            try:
                while not stop.is_set():
                    started = time.monotonic()
                    # Read each batch: a definition published since with its own retention
                    # counts.
                    classes = self.retention.classes(store.definition_retentions(conn))
                    deleted = store.purge_expired_tasks(conn, classes, self.batch)
                    conn.commit()
                    total += deleted
                    if deleted < self.batch:
                        break
                    stop.wait((time.monotonic() - started) * self.pause_ratio)
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
