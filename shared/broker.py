"""The producer side of Celery: publishes task ids by name, never importing handler code."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery
from kombu.exceptions import KombuError

from config.celery import celery_settings
from config.settings import Settings
from shared.definitions import celery_task_name
from shared.status import Priority
from shared.store import Dispatch

log = logging.getLogger(__name__)

# Errors that mean "the broker is unreachable", not a bug.
try:  # pragma: no branch
    from redis.exceptions import RedisError

    BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)
except ImportError:  # pragma: no cover
    BROKER_ERRORS = (KombuError, OSError)


def make_celery(settings: Settings, name: str = "taskexec") -> Celery:
    """Create a Celery app configured for this service (no tasks registered)."""
    # No fixups: the Django one imports celery.worker into every producer (the API).
    app = Celery(name, set_as_current=False, fixups=[])
    app.conf.update(celery_settings(settings))
    return app


def time_limits(timeout_ms: int, grace: float) -> tuple[float, float]:
    """Return (soft, hard) Celery time limits in seconds for an attempt timeout."""
    soft = max(timeout_ms / 1000.0, 0.001)
    return soft, soft + grace


def priority_rank_to_broker(rank: int) -> int:
    """Map a stored priority rank (0 LOW .. 3 CRITICAL) to Celery's Redis priority."""
    return list(Priority)[max(0, min(rank, 3))].broker_priority


class Broker:
    """Publishes dispatches to the executor queues."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings, "taskexec-producer")

    def publish(self, dispatch: Dispatch, countdown: float | None = None) -> None:
        """Send one task's message; raises one of BROKER_ERRORS when Redis is unreachable."""
        self._send(dispatch, countdown=countdown)

    def publish_many(self, dispatches: Sequence[Dispatch]) -> list[Dispatch]:
        """Publish several on one connection; return those that could not be sent."""
        if not dispatches:
            return []
        sent = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for dispatch in dispatches:
                    self._send(dispatch, producer=producer)
                    sent += 1
        except BROKER_ERRORS:
            log.warning(
                "broker unreachable: %d task(s) left for the sweeper", len(dispatches) - sent
            )
            return list(dispatches[sent:])
        return []

    def _send(
        self, dispatch: Dispatch, producer: object = None, countdown: float | None = None
    ) -> None:
        soft, hard = time_limits(dispatch.timeout_ms, self.settings.hard_timeout_grace)
        self.app.send_task(
            celery_task_name(dispatch.task_definition_id),
            args=[str(dispatch.id)],
            task_id=str(dispatch.id),
            queue=dispatch.executor,
            priority=priority_rank_to_broker(dispatch.priority),
            soft_time_limit=soft,
            time_limit=hard,
            countdown=countdown,
            producer=producer,
        )

    def revoke(self, task_id: str, terminate: bool, signal: str = "SIGKILL") -> None:
        """Ask every worker to drop (and, with `terminate`, kill) a task's execution."""
        self.app.control.revoke(task_id, terminate=terminate, signal=signal)
