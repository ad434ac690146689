"""The sweeper: releases due work, republishes what Redis lost, rescues dead attempts, purges.

It runs as its own process (`taskexec beat`) rather than as Celery beat jobs, because its main
duty is to repair the broker: it must keep working while Redis is down and must never wait in
a queue behind the tasks it is there to rescue. Every write it makes is a guarded
compare-and-set, so several sweepers may run at once.
"""

from __future__ import annotations

import logging
import threading
import time

from config.settings import Settings
from shared import outbox, store
from shared.broker import BROKER_ERRORS, Broker
from shared.db import Database
from shared.errors import ServiceUnavailable, TaskexecError
from shared.status import ErrorKind, Status
from workers.context import KILL_AFTER_TERM_SECONDS
from workers.executor import Runtime
from workers.failures import error_doc, worker_lost_failure
from workers.release_wait import ReleaseWait
from workers.releaser import Releaser
from workers.retention import Purger
from workers.schedule_fire import ScheduleFirer

log = logging.getLogger(__name__)
PURGE_EVERY_SECONDS = 300
#: Tasks one release round publishes at most (one statement, one Redis pipeline).
RELEASE_BATCH = 500
#: Wake this long after a task falls due, so the release finds it due on the database's clock.
RELEASE_SLACK_SECONDS = 0.002
#: What `Runtime.record_failure` returns when the task had moved on before the sweeper's write.
MOVED_ON = frozenset({"superseded", "cancelled"})


class Sweeper:
    """One sweeper loop over the ledger."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.broker = broker or Broker(settings)
        self.runtime = Runtime(settings, self.broker)
        # Schedules fire on a thread (and connections) of their own: see run_forever.
        self.schedules = ScheduleFirer(
            Database(settings.database_url, max_connections=4), self.broker, settings
        )
        self.releaser = Releaser(settings, self.runtime.db, self.broker)
        self._last_purge = 0.0
        self.purger = Purger(settings, self.runtime.db)

    def sweep_once(self) -> dict[str, int]:
        """Do one round; return counts of what it did."""
        counts = {
            "published": self.publish_due(),
            "rescued": self.rescue_expired_leases(),
            "timed_out": self.enforce_deadlines(),
            "closed": self.close_abandoned_attempts(),
        }
        if time.monotonic() - self._last_purge > PURGE_EVERY_SECONDS:
            with self.runtime.db.connection() as conn:
                store.purge_expired_idempotency(conn)
            self._last_purge = time.monotonic()
        return counts

    def publish_due(self, poll: bool = False) -> int:
        """Send ready work as the executors' windows allow (fairly between owners), and
        republish tasks whose message is overdue (lost with Redis); return how many went out.

        `poll`: only a look at full windows (no NOTIFY, no due time): while they are still
        full it costs Redis one read and Postgres nothing.
        """
        released = self.releaser.release(poll)
        if poll:
            return released
        with self.runtime.db.connection() as conn:
            due = store.take_due_for_publish(conn, self.settings.republish_after, RELEASE_BATCH)
        failed = outbox.publish(self.broker, self.runtime.db, due)
        if due:
            log.info("republished %d overdue task(s)", len(due) - len(failed))
        return released + len(due) - len(failed)

    def rescue_expired_leases(self) -> int:
        """End attempts whose worker died (lease expired): retry per policy or fail WORKER_LOST."""
        with self.runtime.db.connection() as conn:
            expired = store.expired_leases(conn)
        rescued = 0
        for task in expired:
            failure = worker_lost_failure(task, "stopped renewing its lease")
            if self.runtime.record_failure(task, task.attempts, failure) not in MOVED_ON:
                rescued += 1
        if rescued:
            log.warning("rescued %d task(s) from lost workers", rescued)
        return rescued

    def enforce_deadlines(self) -> int:
        """Time out tasks past their submission deadline, stopping any running attempt."""
        with self.runtime.db.connection() as conn:
            overdue = store.expired_deadlines(conn)
        count = 0
        for task in overdue:
            error = error_doc(
                "DEADLINE_EXCEEDED",
                "the job did not finish before its timeout",
                ErrorKind.TASK_ERROR,
            )
            with self.runtime.db.connection() as conn:
                done = store.fail_task(conn, task.id, Status.TIMED_OUT, error, attempt=None)
            if done is None:
                continue
            count += 1
            if task.status == Status.RUNNING.value:
                try:
                    self.broker.revoke(str(task.id), terminate=True)
                except BROKER_ERRORS:
                    log.warning("could not revoke %s; its attempt stops at its next check", task.id)
        return count

    def close_abandoned_attempts(self) -> int:
        """Close attempts still open long after their task moved on, killing any that still run.

        Normally the worker closes them when it stops the handler; this covers a worker that
        died meanwhile, or a child whose watcher could not act (e.g. stuck holding the GIL).
        Only cancelled tasks are revoked: a superseded attempt shares its Celery task id with
        the task's current attempt, which must not be killed.
        """
        older_than = (
            self.settings.cancel_grace + KILL_AFTER_TERM_SECONDS + self.settings.lease_seconds
        )
        with self.runtime.db.connection() as conn:
            closed = store.close_abandoned_attempts(conn, older_than)
            cancelled = [a for a in closed if a.status == Status.CANCELLED.value]
            for attempt in cancelled:
                self.runtime.log_cancel(conn, attempt)
        for attempt in cancelled:
            try:
                self.broker.revoke(str(attempt.task_id), terminate=True)
            except BROKER_ERRORS:
                log.warning("could not revoke %s", attempt.task_id)
        if closed:
            log.warning("closed %d attempt(s) left open by lost workers", len(closed))
        return len(closed)

    def renew_leases_after_outage(self) -> int:
        """Give running attempts a fresh lease once the database is back after an outage.

        No worker could renew its lease while Postgres was away, so rescuing every attempt
        whose lease ran out meanwhile would run live attempts a second time. Workers renew
        within a heartbeat of the database's return; a dead one's lease runs out once more.
        """
        with self.runtime.db.connection() as conn:
            renewed = store.extend_running_leases(conn, self.settings.lease_seconds)
        if renewed:
            log.warning("database back: renewed the lease of %d running attempt(s)", renewed)
        return renewed

    def next_release_in(self) -> float | None:
        """Seconds until the next waiting task (a delayed one, a long retry) falls due."""
        with self.runtime.db.connection(autocommit=True) as conn:
            return store.next_release_in(conn)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Sweep every `sweep_interval` seconds until `stop` is set; survive outages.

        Between rounds it sleeps until the earliest waiting task falls due, if that comes
        sooner, and then only releases what is due; a NOTIFY from a delayed submission
        wakes it to look again, so a delayed task starts on time without a fast poll.
        """
        stop = stop or threading.Event()
        log.info("sweeper running every %.1fs", self.settings.sweep_interval)
        # The purge has a thread of its own, so a large backlog never delays a release or a
        # rescue; it stops with the loop.
        purge = threading.Thread(
            target=self.purger.run_forever, args=(stop,), name="purge", daemon=True
        )
        purge.start()
        # Schedules too: a slot is due at a known second, and a long release or rescue round
        # must not make it late (nor a large schedule round delay a release).
        fire = threading.Thread(
            target=self.schedules.run_forever, args=(stop,), name="schedules", daemon=True
        )
        fire.start()
        waiter = ReleaseWait(self.settings.database_url, stop, self.settings.db_connect_timeout)
        database_lost = False
        next_sweep = 0.0
        polling = notified = False
        try:
            while not stop.is_set():
                wait: float | None = None
                try:
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + self.settings.sweep_interval
                        if database_lost:
                            self.renew_leases_after_outage()
                            database_lost = False
                        released = self.sweep_once()["published"]
                    else:
                        released = self.publish_due(poll=polling and not notified)
                    waiter.listen()  # before the look-up: a submission after it wakes us
                    due_in = self.next_release_in()
                    if released >= RELEASE_BATCH or self.releaser.busy:
                        wait = 0.0  # more may be due than one round takes
                    elif due_in is not None:
                        wait = due_in + RELEASE_SLACK_SECONDS
                    poll = self.settings.release_poll
                    # Ready work waits for room in a window: look again shortly (a worker's
                    # claim opens room without telling anyone).
                    polling = self.releaser.backlog and (wait is None or poll < wait)
                    if polling:
                        wait = poll
                except TaskexecError as exc:
                    database_lost = database_lost or isinstance(exc, ServiceUnavailable)
                    log.warning("sweep skipped: %s", exc.message)
                except BROKER_ERRORS as exc:
                    log.warning("sweep skipped, broker unreachable: %s", exc)
                except Exception:
                    log.exception("sweep failed")
                # A round that overran its interval still leaves the database a short pause.
                until_sweep = max(next_sweep - time.monotonic(), 0.05)
                if not stop.is_set():
                    notified = waiter.sleep(until_sweep if wait is None else min(wait, until_sweep))
        finally:
            waiter.close()
            purge.join(timeout=5)
            fire.join(timeout=5)
