"""The `celery -A workers.celery_app` target: one Celery task per registered definition."""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import Terminated, WorkerLostError
from celery import Celery, Task, signals
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from config.logging import configure_logging
from config.settings import Settings
from shared import store
from shared.broker import Broker, make_celery
from shared.definitions import Registry, TaskDefinition
from workers import log_context, transport
from workers import metrics as worker_metrics
from workers.definitions import load_registry
from workers.executor import CANCELLED, Runtime, wait_for_database

log = logging.getLogger(__name__)

#: Seconds the pool waits for a dead child's result before reporting it lost. Results go to
#: Postgres, not through the pool, so there is nothing worth waiting Celery's default 10 s for.
WORKER_LOST_WAIT = 0.5
#: Seconds between the pool's checks for children that died unnoticed (Celery's is 5).
MAINTAIN_POOL_SECONDS = 1.0
#: A cancelled attempt's return value as the pool hands it to the parent (its repr).
_CANCELLED_RESULT = saferepr(CANCELLED)
#: Celery's loggers of a line per task: "Task ... received" (the parent's strategy) and
#: "Task ... succeeded in ...s: 'completed'" (the child's tracer). Their warnings and errors
#: always show; the INFO lines only with TASKEXEC_WORKER_TASK_LOG.
TASK_LINE_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


class _ChildPool(AsynPool):  # type: ignore[misc]
    @property
    def timers(self) -> dict[Any, float]:
        return {self.maintain_pool: MAINTAIN_POOL_SECONDS}


class TaskPool(PreforkPool):  # type: ignore[misc]
    """Celery's prefork pool, checking for killed children every second, not every five.

    The pool usually learns of a dead child at once from its sentinel pipe, but not always;
    then the periodic check is what frees the slot and lets the parent record the loss.
    """

    Pool = _ChildPool


class AttemptRequest(Request):  # type: ignore[misc]
    """One delivery as the worker parent sees it: it records what a killed child cannot.

    Hard time limits and dead children (a signal, the OOM killer, a cancel's escalation) are
    recorded here at once, fenced by this host and the child's pid, instead of waiting for the
    lease to expire. When the ledger already reflects the loss, the message is acknowledged
    rather than requeued, so no duplicate delivery follows.
    """

    _settled = False

    @property
    def _runtime(self) -> Runtime:
        return self.task.runtime  # type: ignore[no-any-return]

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Record a hard time limit before Celery acknowledges the message."""
        if not soft:
            try:
                self._runtime.record_hard_timeout(self.id, self.worker_pid)
            except Exception:  # noqa: BLE001 - the parent must keep serving; the lease rescues
                log.exception("could not record the hard time limit of %s", self.id)
        super().on_timeout(soft, timeout)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        """Record a child that died (signal, OOM killer, revoke) before Celery settles it."""
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError | Terminated | SystemExit):
            why = "was terminated" if isinstance(exc, Terminated) else f"died ({exc})"
            # billiard names the exit only in the message: "... exited prematurely: signal 9
            # (SIGKILL)", the signal of the kernel's OOM killer among others.
            killed = isinstance(exc, WorkerLostError) and "(SIGKILL)" in str(exc)
            outcome = None
            try:
                outcome = self._runtime.child_lost(self.id, self.worker_pid, why, killed)
            except Exception:  # noqa: BLE001 - leave it to redelivery and the lease
                log.exception("could not record the lost worker of %s", self.id)
            self._settled = outcome is not None
            if outcome == CANCELLED:
                # A cancel's escalation killed the child, as it had to: not a failure.
                worker_metrics.count(self.task.definition.id, outcome)
                super().on_failure(exc_info, send_failed_event=False, return_ok=True)
                self._show_cancelled()
                return
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        """Send a task event; an attempt that a cancel ended is shown REVOKED, not succeeded."""
        if type == "task-succeeded" and fields.get("result") == _CANCELLED_RESULT:
            self._show_cancelled()
            return
        super().send_event(type, **fields)

    def _show_cancelled(self) -> None:
        # REVOKED is Celery's own state for cancelled work: Flower, `celery events` and
        # Flower's event counters know it, where a custom state would be unknown to them.
        super().send_event(
            "task-revoked", terminated=False, signum=None, expired=False, result=_CANCELLED_RESULT
        )

    def reject(self, requeue: bool = False) -> None:
        """Requeue only a message the ledger still needs."""
        super().reject(requeue=requeue and not self._settled)


class DefinitionTask(Task):  # type: ignore[misc]
    """A Celery task that runs one definition."""

    Request = AttemptRequest
    runtime: Runtime
    definition: TaskDefinition


def create_worker_app(settings: Settings | None = None, registry: Registry | None = None) -> Celery:
    """Build the worker's Celery app with a task for each definition in `registry`."""
    settings = settings or Settings.from_env()
    registry = registry or load_registry(settings.definition_modules)
    app = make_celery(settings, "taskexec")
    app.conf.worker_lost_wait = WORKER_LOST_WAIT
    app.conf.worker_pool = f"{__name__}:TaskPool"
    transport.install()  # survive Redis restarts (see workers/transport.py)
    runtime = Runtime(settings, Broker(settings, app))
    app.conf.taskexec_runtime = runtime
    app.conf.taskexec_registry = registry
    log_context.connect_celery_signals()
    if not settings.worker_task_log:
        # Set before the worker builds its strategies and tracers: both read the level once.
        for name in TASK_LINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    worker_metrics.install(settings)
    for definition in registry:
        if definition.handler is None:
            continue  # manual definitions never run on a worker

        def run(self: DefinitionTask, task_id: str) -> str:
            return self.runtime.execute(self.definition, task_id)

        app.task(
            run,
            name=definition.celery_name,
            bind=True,
            base=DefinitionTask,
            runtime=runtime,
            definition=definition,
            acks_late=True,
            ignore_result=True,
        )

    @signals.worker_init.connect(weak=False)
    def publish_definitions(sender: Any = None, **_: Any) -> None:
        wait_for_database(runtime.db, seconds=60)
        with runtime.db.connection() as conn:
            store.publish_definitions(conn, registry)
        log.info("published %d task definitions", len(registry))

    return app


configure_logging(Settings.from_env())
app = create_worker_app()
