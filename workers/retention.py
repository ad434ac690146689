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
PURGE_BATCH = 500
#: After a full batch, sleep this many times as long as it took: the purge then holds the
#: database at most half the time however large the backlog (docs/benchmarks.md, Retention).
PAUSE_RATIO = 1.0


class Purger:
    """Deletes expired tasks in small batches; several sweepers may purge at once."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.retention = Retention.from_settings(settings)
        self.batch = PURGE_BATCH
        self.pause_ratio = PAUSE_RATIO

    def purge_batch(self) -> int:
        """Delete one batch of expired tasks; return how many."""
        with self.db.connection() as conn:
            # Read each round: a definition published since with its own retention counts.
            classes = self.retention.classes(store.definition_retentions(conn))
            return store.purge_expired_tasks(conn, classes, self.batch)

    def purge(self, stop: threading.Event) -> int:
        """Delete batches until none is full (the backlog is gone) or `stop` is set."""
        total = 0
        while not stop.is_set():
            started = time.monotonic()
            deleted = self.purge_batch()
            total += deleted
            if deleted < self.batch:
                break
            stop.wait((time.monotonic() - started) * self.pause_ratio)
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
