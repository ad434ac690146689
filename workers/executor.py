"""The body of every Celery task: claim the row, run the handler, record the outcome."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded

from config.settings import Settings
from shared import outbox, store
from shared.broker import Broker
from shared.db import Database
from shared.definitions import RetryPolicy, TaskDefinition
from shared.errors import (
    OutputValidationError,
    ServiceUnavailable,
    TaskCancelled,
    TaskexecError,
    TaskFailure,
)
from shared.status import CLAIMABLE, ErrorKind, Status
from shared.validation import schema_errors
from workers import metrics as worker_metrics
from workers.context import AttemptContext
from workers.failures import (
    Failure,
    error_doc,
    oom_killed_failure,
    retry_delay_ms,
    timeout_failure,
    worker_lost_failure,
)
from workers.limits import memory_limit
from workers.log_context import task_log_context
from workers.oom import OomKills

log = logging.getLogger(__name__)
HOST = socket.gethostname()
#: An early message is sent back with at least this countdown, so it cannot spin.
MIN_REQUEUE_SECONDS = 0.05
#: What `Runtime.execute` returns for an attempt a cancel ended (Flower shows it REVOKED).
CANCELLED = "cancelled"
#: How long a worker child retries its claim or its outcome while Postgres is unreachable.
#: Past it the attempt is left to the lease sweeper, and may run again.
LEDGER_RETRY_SECONDS = 60.0
T = TypeVar("T")


def process_alive(pid: int) -> bool:
    """Say whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runtime:
    """What a worker process needs to execute attempts: settings, the ledger, the broker."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, max_connections=4)
        # Claims commit without waiting for the disk: the profile showed a no-op task's slot
        # waiting on two WAL flushes, claim and finish. A claim lost in a Postgres crash
        # costs nothing a crash may not: the finish then matches no attempt, the message is
        # settled, and the sweeper republishes the task (at least once, as ever). And once
        # the finish commits, its flush carries the earlier claim to disk too, WAL being
        # sequential. The finish, and every other write, still waits for the disk.
        self.claims = Database(settings.database_url, max_connections=4, synchronous_commit=False)
        self.broker = broker
        # Read by the worker's parent when a child dies; its baseline is taken here, at start.
        self.oom = OomKills()

    # ------------------------------------------------------------ one attempt

    def execute(self, definition: TaskDefinition, task_id: str) -> str:
        """Run one delivery of `task_id`; return what happened (for logs and tests)."""
        tid = uuid.UUID(task_id)
        task = self._while_unavailable(self._claim, tid)
        if task is None:
            return self._not_claimed(tid)
        worker_metrics.started(definition.id, task)  # its queue wait, from the claimed row
        # Every line logged during the attempt carries its number (task id and definition
        # are set by the Celery signal hooks in workers/log_context.py).
        with task_log_context(attempt=task.attempts):
            return self._attempt(definition, task)

    def _attempt(self, definition: TaskDefinition, task: store.ClaimedTask) -> str:
        tid, task_id, attempt = task.id, str(task.id), task.attempts
        # DEBUG: Celery logs the message's arrival and the claim is in Postgres; an INFO line
        # here cost a no-op task a few percent of its CPU.
        log.debug("attempt %d of %s (%s) started", attempt, task_id, definition.id)
        try:
            context = AttemptContext(self.db, self.settings, tid, attempt)
            context.start()
            try:
                output, failure = self._run_handler(definition, task, context)
            finally:
                context.stop()
            if failure is None:
                done = self._while_unavailable(self._complete, tid, attempt, output)
                # DEBUG: Celery's own INFO line ends with what this returns ('completed').
                log.debug("attempt %d of %s completed (%s)", attempt, task_id, done)
                return "completed" if done else self._moved_on(tid, attempt)
            return self._while_unavailable(self.record_failure, task, attempt, failure)
        except SoftTimeLimitExceeded:
            # The soft limit struck outside the handler (while recording): the attempt is
            # still ours and still over time.
            failure = timeout_failure(task, killed=False)
            return self._while_unavailable(self.record_failure, task, attempt, failure)

    def _claim(self, tid: uuid.UUID) -> store.ClaimedTask | None:
        with self.claims.connection(autocommit=True) as conn:  # one statement: one round trip
            return store.claim_task(conn, tid, HOST, os.getpid(), self.settings.lease_seconds)

    def _complete(self, tid: uuid.UUID, attempt: int, output: Any) -> bool:
        with self.db.connection(autocommit=True) as conn:
            return store.finish_attempt(conn, tid, attempt, Status.COMPLETED, output=output)

    @staticmethod
    def _while_unavailable(write: Callable[..., T], *args: Any) -> T:
        """Call `write`, retrying while Postgres is unreachable (a worker child only).

        Without this an attempt that finished during a database outage would be lost with
        its result, rescued by the sweeper later and run again. Every write is fenced by
        the attempt number, so a retry after a commit whose answer was lost is a no-op.
        """
        deadline = time.monotonic() + LEDGER_RETRY_SECONDS
        pause = 0.1
        while True:
            try:
                return write(*args)
            except ServiceUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("the ledger is unreachable; retrying in %.1fs", pause)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _not_claimed(self, tid: uuid.UUID) -> str:
        """Deal with a message whose task cannot start now: a duplicate, early, or orphaned."""
        with self.db.connection() as conn:
            task = store.get_task(conn, tid)
            due_in = store.retry_due_in(conn, tid)
        if task is None:
            return "skipped"
        if task.held_on is not None:
            # A limit was full: the claim held it back (no message) for the releaser.
            log.info("%s held back by %s; message dropped", tid, task.held_on)
            return "held"
        if (
            task.status == Status.RUNNING.value
            and task.worker_host == HOST
            and task.worker_pid is not None
            and task.worker_pid != os.getpid()
            and not process_alive(task.worker_pid)
        ):
            # Redelivered after our sibling died: end its attempt now, not at lease expiry.
            self.child_lost(str(tid), task.worker_pid, "died (found on redelivery)")
            return "recovered"
        if due_in is not None and due_in <= self.settings.retry_countdown_max:
            # An early message (a duplicate, or a clock running ahead): send it back for
            # when the retry is due. Claims are strict, so at worst it is dropped later.
            self._publish_retry(task, int(max(due_in, MIN_REQUEUE_SECONDS) * 1000))
            return "requeued"
        log.info("nothing to claim for %s (%s); message dropped", tid, task.status)
        return "skipped"

    def _run_handler(
        self, definition: TaskDefinition, task: store.ClaimedTask, context: AttemptContext
    ) -> tuple[Any, Failure | None]:
        assert definition.handler is not None
        try:
            with memory_limit(definition.memory_limit):
                output = definition.handler(task.input, context)
        except SoftTimeLimitExceeded:
            return None, timeout_failure(task, killed=False)
        except MemoryError:
            limit = definition.resource_requirements.get("memory")
            return None, Failure(
                error_doc(
                    "OUT_OF_MEMORY",
                    f"the attempt exceeded its memory limit of {limit}",
                    ErrorKind.OUT_OF_MEMORY,
                ),
                retryable=False,
            )
        except TaskCancelled as exc:
            return None, Failure(
                error_doc(exc.code, exc.message, ErrorKind.TASK_ERROR), Status.CANCELLED, False
            )
        except TaskFailure as exc:
            return None, Failure(
                error_doc(exc.code, exc.message, ErrorKind.TASK_ERROR, exc.details),
                retryable=exc.retryable,
            )
        except Exception as exc:  # a handler's bug is the task's failure, not the worker's
            log.exception("handler of %s raised", task.id)
            return None, Failure(
                error_doc(
                    "HANDLER_EXCEPTION", f"{type(exc).__name__}: {exc}"[:2000], ErrorKind.TASK_ERROR
                ),
            )
        problems = schema_errors(definition.output_schema, output)
        if problems:
            exc_ = OutputValidationError("the handler's output does not match the output schema")
            return None, Failure(
                error_doc(exc_.code, exc_.message, ErrorKind.TASK_ERROR, {"errors": problems}),
                retryable=False,
            )
        return output, None

    # ------------------------------------------------------------ outcomes

    def record_failure(
        self, task: store.Task | store.ClaimedTask, attempt: int, failure: Failure
    ) -> str:
        """Retry the task per its policy, or give it its terminal failure status.

        `task` is the claimed row (in the child) or the whole row (in the worker parent).
        """
        policy = RetryPolicy.from_json(task.retry_policy)
        lost_cap = (
            failure.worker_lost and task.worker_lost_count + 1 >= self.settings.max_worker_lost
        )
        if failure.status is Status.CANCELLED or not (
            failure.retryable and attempt < policy.max_attempts() and not lost_cap
        ):
            with self.db.connection(autocommit=True) as conn:
                done = store.finish_attempt(
                    conn, task.id, attempt, failure.status, error=failure.error
                )
            if not done:
                return self._moved_on(task.id, attempt)
            log.info("attempt %d of %s ended %s", attempt, task.id, failure.status)
            return failure.status.value.lower()
        delay_ms = retry_delay_ms(policy, attempt)
        # Short delays ride on the broker's countdown; long ones wait in Postgres, because a
        # message held past the visibility timeout would be delivered a second time. A
        # limited task's retry always waits there: the releaser sends it when its limits
        # have room, so a message waiting out its backoff never counts against them.
        use_countdown = delay_ms / 1000.0 <= self.settings.retry_countdown_max and not task.limited
        with self.db.connection() as conn:
            retrying = store.schedule_retry(
                conn,
                task.id,
                attempt,
                error=failure.error,
                delay_ms=delay_ms,
                published=use_countdown,
                worker_lost=failure.worker_lost,
                outcome=failure.status.value,
            )
        if retrying is None:
            return self._moved_on(task.id, attempt)
        if use_countdown:
            self._publish_retry(retrying, delay_ms)
        log.info("attempt %d of %s failed; retry in %d ms", attempt, task.id, delay_ms)
        return "retrying"

    def _moved_on(self, tid: uuid.UUID, attempt: int) -> str:
        """Say how an attempt ended whose task moved on without it: cancelled or superseded.

        The write that found the task gone closed the attempt; a cancel gave it the cancel's
        error, which the task log and this worker's log repeat. Only such attempts pay for
        this read.
        """
        with self.db.connection() as conn:
            closed = store.get_attempt(conn, tid, attempt)
            if closed is None or closed.status != Status.CANCELLED.value:
                return "superseded"
            self.log_cancel(conn, closed)
        return CANCELLED

    @staticmethod
    def log_cancel(conn: store.Conn, closed: store.Attempt) -> None:
        """Say in the task's log and in this process's log that a cancel ended `closed`."""
        said = (closed.error or {}).get("message", "cancelled")
        store.append_log(conn, closed.task_id, closed.attempt, "WARNING", said)
        log.info("attempt %d of %s %s", closed.attempt, closed.task_id, said)

    def _publish_retry(self, task: store.Task, delay_ms: int) -> None:
        if outbox.publish(self.broker, self.db, [outbox.Dispatch.of(task)], delay_ms / 1000.0):
            log.warning("could not publish the retry of %s; the sweeper will", task.id)

    # ------------------------------------------------------------ the worker parent's view

    def record_hard_timeout(self, task_id: str, pid: int | None) -> None:
        """Record an attempt Celery killed at its hard time limit (runs in the worker parent)."""
        with self.db.connection() as conn:
            task = store.get_task(conn, uuid.UUID(task_id))
        if task is None or not self._ran_here(task, pid):
            return
        log.warning("attempt %d of %s killed at its hard time limit", task.attempts, task_id)
        self.record_failure(task, task.attempts, timeout_failure(task, killed=True))

    def child_lost(
        self, task_id: str, pid: int | None, why: str, killed: bool = False
    ) -> str | None:
        """Record that the child process running `task_id` died; return what became of it.

        `killed` says it died of SIGKILL: then a rise in its cgroup's OOM kills makes the
        attempt OUT_OF_MEMORY rather than WORKER_LOST.

        None means the ledger still needs this message: the child died before it took the job,
        or the task is still waiting to be claimed. Anything else settles the message: the
        attempt was recorded (WORKER_LOST, any retry published: `record_failure`'s outcome),
        closed as `cancelled` (its task was cancelled), or the task had moved on (`superseded`).
        """
        if pid is None:
            return None  # the child died before it took the job: let it be redelivered
        tid = uuid.UUID(task_id)
        with self.db.connection() as conn:
            task = store.get_task(conn, tid)
            if task is None:
                return "skipped"
            if task.status in CLAIMABLE:
                return None
            if task.status != Status.RUNNING.value:
                # Cancelled, timed out or superseded: close the attempt the child left open.
                closed = store.end_abandoned_attempt(conn, tid, HOST, pid)
                if closed is None or closed.status != Status.CANCELLED.value:
                    return "superseded"
                self.log_cancel(conn, closed)
                return CANCELLED
        if not self._ran_here(task, pid):
            return "superseded"  # another process runs the current attempt, under its own message
        # Only the deaths recorded here take a look at the counter, so a rise is not spent on
        # a child that a cancel killed meanwhile.
        if self.oom.rose() and killed:
            log.warning(
                "the OOM killer ended process %d running attempt %d of %s", pid, task.attempts, tid
            )
            failure = oom_killed_failure(task)
        else:
            log.warning("worker process %d died running attempt %d of %s", pid, task.attempts, tid)
            failure = worker_lost_failure(task, why)
        return self.record_failure(task, task.attempts, failure)

    @staticmethod
    def _ran_here(task: store.Task, pid: int | None) -> bool:
        return (
            task.status == Status.RUNNING.value
            and task.worker_host == HOST
            and (pid is None or task.worker_pid == pid)
        )


def wait_for_database(db: Database, seconds: float) -> None:
    """Block until the database answers, up to `seconds` (workers start before Postgres)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with db.connection() as conn:
                store.ping(conn)
            return
        except TaskexecError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
