"""The optimistic outbox: publish after commit; what the broker refuses goes back to the sweeper.

A row is stamped `published_at` in the transaction that writes it, as if its message were
already sent; the message goes out after the commit. If the broker refuses it, the stamp is
cleared so the next sweep publishes it at once; if even that fails (or the process dies
first), the sweeper republishes it once the stamp is `republish_after` old.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared import store
from shared.errors import ServiceUnavailable

if TYPE_CHECKING:
    from shared.broker import Broker
    from shared.db import Database


@dataclass(frozen=True)
class Dispatch:
    """What the broker needs to deliver one task."""

    id: uuid.UUID
    task_definition_id: str
    executor: str
    priority: int
    timeout_ms: int

    @classmethod
    def of(cls, task: store.Task) -> Dispatch:
        """The message that delivers `task`."""
        return cls(task.id, task.task_definition_id, task.executor, task.priority, task.timeout_ms)


def publish(
    broker: Broker,
    db: Database,
    dispatches: Sequence[Dispatch],
    countdown: float | None = None,
) -> list[Dispatch]:
    """Publish committed dispatches in one round trip; return those the broker refused.

    The refused ones are released (their `published_at` cleared) for the sweeper.
    """
    failed = broker.publish_many(dispatches, countdown)
    if failed:
        try:
            with db.connection() as conn:
                store.unpublish(conn, [d.id for d in failed])
        except ServiceUnavailable:
            pass  # published_at stays set: the sweeper republishes once it is overdue
    return failed
