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
MAX_LOG_LINES = 1000
MAX_LOG_LINE = 4000


class AttemptContext:
    """One running attempt: renews its lease, watches for a cancel, and escalates if ignored."""

    def __init__(self, db: Database, settings: Settings, task_id: uuid.UUID, attempt: int) -> None:
        self.db = db
        self.settings = settings
        self.task_id = str(task_id)
        self._uuid = task_id
        self.attempt = attempt
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._cancel_seen_at: float | None = None
        self._lines = 0
        self._thread = threading.Thread(
            target=self._watch, name=f"attempt-{self.task_id[:8]}", daemon=True
        )

    # -- what handlers use

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise TaskCancelled("the task was cancelled while it ran")

    def progress(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self._write(store.set_progress, {"fraction": fraction, "message": message[:500]})

    def log(self, message: str, level: str = "INFO") -> None:
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
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        while not self._done.wait(CANCEL_POLL_SECONDS):
            now = time.monotonic()
            try:
                with self.db.connection() as conn:
                    if now >= next_beat:
                        beat = store.heartbeat(
                            conn, self._uuid, self.attempt, self.settings.lease_seconds
                        )
                        next_beat = now + self.settings.heartbeat_seconds
                        stop = beat.cancel_requested or not beat.current
                        force = False
                    else:
                        stop, force = store.cancel_state(conn, self._uuid, self.attempt)
            except TaskexecError:
                continue  # Postgres is away; the lease covers us until it is back
            if stop:
                self._on_cancel(force)

    def _on_cancel(self, force: bool) -> None:
        if self._cancel_seen_at is None:
            self._cancel_seen_at = time.monotonic()
            self._cancel.set()
            log.info("cancel requested for %s attempt %d", self.task_id, self.attempt)
        waited = time.monotonic() - self._cancel_seen_at
        # The handler ignored the flag: stop its code by ending this child process; the
        # pool replaces it, and the redelivered message finds the task CANCELLED.
        if force or waited >= self.settings.cancel_grace + 2:
            os.kill(os.getpid(), signal.SIGKILL)
        elif waited >= self.settings.cancel_grace:
            os.kill(os.getpid(), signal.SIGTERM)
