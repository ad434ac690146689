"""The context a handler runs in: cancellation, progress, logs, and the lease heartbeat."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from typing import Any

from config.settings import Settings
from shared import store
from shared.db import Database
from shared.errors import TaskCancelled, TaskexecError

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.2
#: After SIGTERM, how long a handler has before SIGKILL (SIGTERM can be ignored).
KILL_AFTER_TERM_SECONDS = 2.0
#: After a forced cancel's interrupt, how long a handler has before SIGKILL.
KILL_AFTER_INTERRUPT_SECONDS = 1.0
#: Celery's soft time-limit signal: the child's handler raises SoftTimeLimitExceeded.
INTERRUPT = signal.SIGUSR1
MAX_LOG_LINES = 1000
MAX_LOG_LINE = 4000


class AttemptContext:
    """One running attempt: renews its lease, watches for a cancel, and escalates if ignored.

    The watcher is a thread of the worker child that runs the handler. A cancel sets a flag the
    handler may poll (`check_cancelled`); a handler that does not stop within
    `TASKEXEC_CANCEL_GRACE` seconds gets SIGTERM, and SIGKILL `KILL_AFTER_TERM_SECONDS` later.
    A forced cancel skips the grace: it interrupts the handler at once with Celery's soft
    time-limit signal (the child lives on and its slot is free in milliseconds, where a killed
    child waits for the pool to replace it), and kills the child if the handler is still running
    `KILL_AFTER_INTERRUPT_SECONDS` later. Signals go to this child only, which runs nothing but
    this attempt.
    """

    def __init__(self, db: Database, settings: Settings, task_id: uuid.UUID, attempt: int) -> None:
        self.db = db
        self.settings = settings
        self.task_id = str(task_id)
        self._uuid = task_id
        self.attempt = attempt
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._cancel_seen_at: float | None = None
        self._interrupted = False
        self._lines = 0
        # Held while deciding to signal and signalling, and by `stop`: once `stop` returns,
        # the watcher can no longer signal this process on this attempt's behalf.
        self._signal_lock = threading.Lock()
        self._next_beat = time.monotonic() + settings.heartbeat_seconds

    # -- what handlers use

    def cancelled(self) -> bool:
        """Say whether a cancel was requested; long handlers poll this."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise TaskCancelled if a cancel was requested."""
        if self._cancel.is_set():
            raise TaskCancelled("the task was cancelled while it ran")

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress between 0 and 1."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        self._write(store.set_progress, {"fraction": fraction, "message": message[:500]})

    def log(self, message: str, level: str = "INFO") -> None:
        """Append a line to the task's log (at most MAX_LOG_LINES per attempt)."""
        if self._lines >= MAX_LOG_LINES:
            return
        self._lines += 1
        self._write(store.append_log, level.upper()[:10], str(message)[:MAX_LOG_LINE])

    def _write(self, fn: Any, *args: Any) -> None:
        try:
            with self.db.connection() as conn:
                fn(conn, self._uuid, self.attempt, *args)
        except TaskexecError:
            log.warning("could not record progress or log for %s", self.task_id)

    # -- lifecycle

    def start(self) -> None:
        """Have this process's watcher thread watch this attempt."""
        _WATCHER.watch(self)

    def stop(self) -> None:
        """Stop watching; after this the watcher never signals the process for this attempt."""
        with self._signal_lock:
            self._done.set()

    def _poll(self) -> None:
        """Renew the lease when due, look for a cancel, and escalate (the watcher calls it)."""
        if self._done.is_set():
            return
        try:
            # Autocommit: a poll is one statement, one round trip, five times a second.
            with self.db.connection(autocommit=True) as conn:
                if time.monotonic() >= self._next_beat:
                    store.heartbeat(conn, self._uuid, self.attempt, self.settings.lease_seconds)
                    self._next_beat = time.monotonic() + self.settings.heartbeat_seconds
                stop, force = store.cancel_state(conn, self._uuid, self.attempt)
        except TaskexecError:
            return  # Postgres is away; the lease covers us until it is back
        except Exception:  # noqa: BLE001 - e.g. MemoryError under the handler's limit
            log.exception("attempt watcher of %s hiccuped", self.task_id)
            return
        if stop:
            self._on_cancel(force)

    def _on_cancel(self, force: bool) -> None:
        with self._signal_lock:
            self._escalate(force)

    def _escalate(self, force: bool) -> None:
        if self._cancel_seen_at is None:
            self._cancel_seen_at = time.monotonic()
            self._cancel.set()
            log.info("cancel requested for %s attempt %d", self.task_id, self.attempt)
        waited = time.monotonic() - self._cancel_seen_at
        grace = self.settings.cancel_grace
        if self._done.is_set():
            return  # the handler returned meanwhile; never signal a process that moved on
        if force and not self._interrupted:
            # The API's revoke sends the same signal; this covers a revoke that was lost.
            self._interrupted = True
            log.warning("interrupting the handler of %s (forced cancel)", self.task_id)
            os.kill(os.getpid(), INTERRUPT)
            return
        # The handler ignored the flag: stop its code by ending this child process; the pool
        # replaces it and the parent closes the attempt.
        if (force and waited >= KILL_AFTER_INTERRUPT_SECONDS) or (
            waited >= grace + KILL_AFTER_TERM_SECONDS
        ):
            log.warning("killing the process of %s (SIGKILL)", self.task_id)
            os.kill(os.getpid(), signal.SIGKILL)
        elif waited >= grace:
            log.warning("terminating the process of %s (SIGTERM)", self.task_id)
            os.kill(os.getpid(), signal.SIGTERM)


class _Watcher:
    """The one thread of a worker child that watches whichever attempt the child is running.

    A child runs one attempt at a time, so one long-lived thread serves them all, polling every
    CANCEL_POLL_SECONDS. Starting a thread per attempt, or even waking one, cost a no-op task a
    tenth of its time in the profile; an attempt that ends before the next poll costs the
    watcher nothing at all.
    """

    def __init__(self) -> None:
        self._pid = 0
        self._current: AttemptContext | None = None

    def watch(self, context: AttemptContext) -> None:
        """Watch `context` from the next poll on, until it is stopped."""
        self._current = context
        if self._pid != os.getpid():
            # Threads do not survive a fork: a pool child starts its own on first use.
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="attempt-watcher", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(CANCEL_POLL_SECONDS)
            context = self._current
            if context is not None:
                context._poll()


_WATCHER = _Watcher()
