"""The `celery -A workers.celery_app` target: one Celery task per registered definition."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import TimeLimitExceeded

from config.logging import configure_logging
from config.settings import Settings
from shared import store
from shared.broker import Broker, make_celery
from shared.definitions import Registry, TaskDefinition
from workers.definitions import builtin_registry
from workers.executor import Runtime, wait_for_database

log = logging.getLogger(__name__)


class DefinitionTask(Task):  # type: ignore[misc]
    """A Celery task that runs one definition; hard time limits are recorded by the parent."""

    runtime: Runtime
    definition: TaskDefinition

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            self.runtime.record_hard_timeout(str(args[0]))


def create_worker_app(settings: Settings | None = None, registry: Registry | None = None) -> Celery:
    """Build the worker's Celery app with a task for each definition in `registry`."""
    settings = settings or Settings.from_env()
    registry = registry or builtin_registry()
    app = make_celery(settings, "taskexec")
    runtime = Runtime(settings, Broker(settings, app))
    app.conf.taskexec_runtime = runtime
    app.conf.taskexec_registry = registry
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
