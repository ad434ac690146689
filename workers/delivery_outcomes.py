"""Attempts' outcomes on their way to the database: queued by the sends, written in batches."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import NamedTuple

import psycopg2

from shared import store
from shared.db import Database
from shared.errors import TaskexecError
from shared.webhook_sender import Reply
from workers.deliverer_metrics import DelivererMetrics

log = logging.getLogger(__name__)

#: Outcomes are written in batches: the first waits this long for others, and one
#: statement records at most RECORD_BATCH of them.
RECORD_LINGER_SECONDS = 0.02
RECORD_BATCH = 500
#: Characters of a failed answer's body kept in the delivery's error.
ERROR_BODY_CHARS = 200


class Result(NamedTuple):
    """One attempt's outcome on its way to the recorder thread."""

    item: store.Claimed
    outcome: store.Outcome
    retry_in: float | None  # None: final (FAILED) unless delivered
    at: datetime  # when the attempt ended


class OutcomeRecorder:
    """Writes the outcomes the sends queue, in batches, on a thread of its own."""

    def __init__(
        self,
        database: Database,
        disable_after: float | None,
        metrics: DelivererMetrics | None = None,
    ) -> None:
        self.db = database
        self.disable_after = disable_after
        self.metrics = metrics or DelivererMetrics.get()
        self._lock = threading.Lock()
        # Outcomes waiting for the recorder thread: a list swapped whole per batch. The
        # first outcome of a batch sets the event (one wake-up per batch, not per outcome).
        self._outcomes: list[Result] = []
        self._ready = threading.Event()
        self._recording = True
        self._thread: threading.Thread | None = None

    def add(self, result: Result) -> None:
        """Queue an outcome for the next batch."""
        with self._lock:
            self._outcomes.append(result)
            first = len(self._outcomes) == 1
        if first:
            self._ready.set()

    def start(self) -> None:
        """Start the recorder thread."""
        self._thread = threading.Thread(
            target=self._record_forever, name="webhook-record", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Write what is queued (the sends have finished) and end the recorder thread."""
        self._recording = False
        self._ready.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _record_forever(self) -> None:
        """Write outcomes in batches until `stop` and every outcome is written."""
        while True:
            self._ready.wait()
            if self._recording:
                # Let the batch fill: at most one write per RECORD_LINGER_SECONDS.
                time.sleep(RECORD_LINGER_SECONDS)
            self.flush()
            # Asked after the flush, which clears `_ready`: a stop that came while the batch
            # filled set it, and waiting again would wait for a wake-up already spent (every
            # stop within 20 ms of an outcome then took stop's whole timeout, 30 s).
            if not self._recording:
                return  # the pool has finished: those were the last

    def record(self, batch: list[Result]) -> None:
        """Write a batch of outcomes in one transaction (no wait for the WAL flush).

        Failing to write loses nothing but the record: the leases lapse, and the deliveries
        are sent again (at least once).
        """
        delivered = [(r.item, r.outcome, r.at) for r in batch if r.outcome.delivered]
        failed = [r for r in batch if not r.outcome.delivered]
        try:
            # The common batch (all delivered) is one statement: no BEGIN/COMMIT round trips.
            with self.db.connection(autocommit=not failed) as conn:
                store.record_delivered_batch(conn, delivered)
                for r in failed:
                    store.record_failed_attempt(
                        conn, r.item, r.outcome, r.retry_in, self.disable_after
                    )
        except (TaskexecError, psycopg2.Error) as exc:
            message = exc.message if isinstance(exc, TaskexecError) else str(exc).strip()
            log.warning(
                "%d delivery outcome(s) not recorded (sent again later): %s", len(batch), message
            )
            self.metrics.unrecorded(len(batch))
        except Exception:
            log.exception("%d delivery outcome(s) not recorded", len(batch))
            self.metrics.unrecorded(len(batch))

    def flush(self) -> int:
        """Write the outcomes queued so far; return how many."""
        with self._lock:
            batch, self._outcomes = self._outcomes, []
            self._ready.clear()
        for start in range(0, len(batch), RECORD_BATCH):
            self.record(batch[start : start + RECORD_BATCH])
        return len(batch)


def result_label(outcome: store.Outcome, final: bool, retry_in: float | None) -> str:
    """The attempt's result as the metrics count it."""
    if outcome.delivered:
        return "delivered"
    return "failed" if final or retry_in is None else "retrying"


def outcome_of(reply: Reply) -> store.Outcome:
    """A receiver's answer as an attempt's outcome (2xx delivered; a redirect is not followed)."""
    if 200 <= reply.status < 300:
        return store.Outcome(True, reply.status, reply.elapsed_ms, None)
    text = reply.body[:ERROR_BODY_CHARS].decode("utf-8", "replace").strip()
    error = f"HTTP {reply.status}" + (f": {text}" if text else "")
    if 300 <= reply.status < 400:
        error = f"HTTP {reply.status}: redirects are not followed"
    return store.Outcome(False, reply.status, reply.elapsed_ms, error)
