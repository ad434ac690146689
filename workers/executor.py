"""The body of every Celery task: claim the row, run the handler, record the outcome."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from config.settings import Settings
from shared import store
from shared.broker import BROKER_ERRORS, Broker
from shared.db import Database
from shared.definitions import RetryPolicy, TaskDefinition
from shared.errors import OutputValidationError, TaskCancelled, TaskexecError, TaskFailure
from shared.status import ErrorKind, Status
from shared.validation import schema_errors
from workers.context import AttemptContext
from workers.limits import memory_limit

log = logging.getLogger(__name__)
HOST = socket.gethostname()


@dataclass(frozen=True)
class Failure:
    """How an attempt failed: the error to record and what may follow it."""

    error: dict[str, Any]
    status: Status = Status.FAILED
    retryable: bool = True
    worker_lost: bool = False


def error_doc(code: str, message: str, kind: ErrorKind, details: Any = None) -> dict[str, Any]:
    """Build the `error` object stored on a task."""
    doc: dict[str, Any] = {"code": code, "message": message, "kind": kind.value}
    if details:
        doc["details"] = details
    return doc


class Runtime:
    """What a worker process needs to execute attempts: settings, the ledger, the broker."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, max_connections=4)
        self.broker = broker

    # ------------------------------------------------------------ one attempt

    def execute(self, definition: TaskDefinition, task_id: str) -> str:
        """Run one delivery of `task_id`; return what happened (for logs and tests)."""
        tid = uuid.UUID(task_id)
        with self.db.connection() as conn:
            task = store.claim_task(conn, tid, HOST, os.getpid(), self.settings.lease_seconds)
        if task is None:
            # A duplicate or stale message, or a task cancelled before it started.
            log.info("nothing to claim for %s; message dropped", task_id)
            return "skipped"
        attempt = task.attempts
        log.info("attempt %d of %s (%s) started", attempt, task_id, definition.id)
        context = AttemptContext(self.db, self.settings, tid, attempt)
        context.start()
        try:
            output, failure = self._run_handler(definition, task, context)
        finally:
            context.stop()
        if failure is None:
            with self.db.connection() as conn:
                done = store.finish_attempt(conn, tid, attempt, Status.COMPLETED, output=output)
            log.info("attempt %d of %s completed (%s)", attempt, task_id, bool(done))
            return "completed" if done else "superseded"
        return self.record_failure(task, attempt, failure)

    def _run_handler(
        self, definition: TaskDefinition, task: store.Task, context: AttemptContext
    ) -> tuple[Any, Failure | None]:
        assert definition.handler is not None
        try:
            with memory_limit(definition.memory_limit):
                output = definition.handler(task.input, context)
        except SoftTimeLimitExceeded:
            message = f"the attempt exceeded its timeout of {task.timeout_ms} ms"
            return None, Failure(
                error_doc("TIMEOUT", message, ErrorKind.TASK_ERROR),
                status=Status.TIMED_OUT,
                retryable=RetryPolicy.from_json(task.retry_policy).retry_on_timeout,
            )
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

    def record_failure(self, task: store.Task, attempt: int, failure: Failure) -> str:
        """Retry the task per its policy, or give it its terminal failure status."""
        policy = RetryPolicy.from_json(task.retry_policy)
        lost_cap = (
            failure.worker_lost and task.worker_lost_count + 1 >= self.settings.max_worker_lost
        )
        if failure.status is Status.CANCELLED or not (
            failure.retryable and attempt < policy.max_attempts() and not lost_cap
        ):
            with self.db.connection() as conn:
                done = store.finish_attempt(
                    conn, task.id, attempt, failure.status, error=failure.error
                )
            log.info("attempt %d of %s ended %s", attempt, task.id, failure.status)
            return failure.status.value.lower() if done else "superseded"
        delay_ms = policy.delay_ms(attempt)
        if policy.jitter:
            delay_ms += int(delay_ms * policy.jitter * random.random())
        # Short delays ride on the broker's countdown; long ones wait in Postgres, because a
        # message held past the visibility timeout would be delivered a second time.
        use_countdown = delay_ms / 1000.0 <= self.settings.retry_countdown_max
        with self.db.connection() as conn:
            retrying = store.schedule_retry(
                conn,
                task.id,
                attempt,
                error=failure.error,
                delay_ms=delay_ms,
                published=use_countdown,
                worker_lost=failure.worker_lost,
            )
        if retrying is None:
            return "superseded"
        if use_countdown:
            self._publish_retry(retrying, delay_ms)
        log.info("attempt %d of %s failed; retry in %d ms", attempt, task.id, delay_ms)
        return "retrying"

    def _publish_retry(self, task: store.Task, delay_ms: int) -> None:
        dispatch = store.Dispatch(
            task.id, task.task_definition_id, task.executor, task.priority, task.timeout_ms
        )
        try:
            self.broker.publish(dispatch, countdown=delay_ms / 1000.0)
        except BROKER_ERRORS:
            log.warning("could not publish the retry of %s; the sweeper will", task.id)
            try:
                with self.db.connection() as conn:
                    store.unpublish(conn, [task.id])
            except TaskexecError:
                pass  # published_at is the due time; the sweeper republishes after it

    def record_hard_timeout(self, task_id: str) -> None:
        """Record an attempt that Celery killed at its hard time limit (runs in the parent)."""
        with self.db.connection() as conn:
            task = store.get_task(conn, uuid.UUID(task_id))
        if task is None or task.status != Status.RUNNING.value:
            return
        message = f"the attempt exceeded its timeout of {task.timeout_ms} ms and was killed"
        self.record_failure(
            task,
            task.attempts,
            Failure(
                error_doc("TIMEOUT", message, ErrorKind.TASK_ERROR),
                status=Status.TIMED_OUT,
                retryable=RetryPolicy.from_json(task.retry_policy).retry_on_timeout,
            ),
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
