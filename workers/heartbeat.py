"""The worker's heartbeat in Redis, from which the API counts workers up (shared/heartbeats.py)."""

from __future__ import annotations

import logging
from typing import Any

from config.settings import Settings
from shared import heartbeats

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats in Redis from the worker's consumer loop (shared/heartbeats.py), while it runs.

    The loop's own timer, not a thread: a worker whose loop is stuck takes no messages, and
    must not look up.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Any = None
        self.node = ""
        self.queues: list[str] = []
        self.slots: int | None = None

    def start(self, sender: Any = None, **_: Any) -> None:
        import redis

        self.client = redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        self.node = str(sender.hostname)
        self.queues = sorted(sender.app.amqp.queues.consume_from)
        self.slots = slots(sender)
        self.beat()
        sender.timer.call_repeatedly(heartbeats.HEARTBEAT_SECONDS, self.beat)

    def beat(self) -> None:
        import redis

        try:
            heartbeats.beat(self.client, self.node, self.queues, self.slots)
        except redis.RedisError as exc:  # the broker is away: the consumer says so already
            log.debug("heartbeat not written: %s", exc)

    def stop(self, **_: Any) -> None:
        import redis

        if self.client is not None:
            try:
                heartbeats.leave(self.client, self.node, self.queues, self.slots)
            except redis.RedisError:
                pass  # it goes stale instead


def slots(consumer: Any) -> int | None:
    """The tasks this worker runs at once: its pool's size (`--concurrency`), None if unknown."""
    controller = getattr(consumer, "controller", None)
    for value in (
        getattr(controller, "concurrency", None),
        getattr(getattr(consumer, "pool", None), "limit", None),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return None


def install(settings: Settings) -> None:
    """Beat from the moment the worker consumes until its warm shutdown."""
    from celery import signals

    heart = Heartbeat(settings)
    signals.worker_ready.connect(heart.start, weak=False, dispatch_uid="taskexec-heartbeat")
    signals.worker_shutdown.connect(heart.stop, weak=False, dispatch_uid="taskexec-heartbeat")
