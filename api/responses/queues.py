"""How the queues look on the wire: GET /api/v1/queues (camelCase, ages in milliseconds)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from shared.queues import QueueSnapshot


class QueueSchema(Schema):
    executor = fields.String(required=True, metadata={"description": "The executor (its queue)"})
    waiting = fields.Integer(
        required=True,
        metadata={
            "description": "PENDING or RETRYING tasks with no message in Redis yet: delayed "
            "(runAt ahead), in a retry's backoff, or held back in the ledger"
        },
    )
    dispatched = fields.Integer(
        required=True,
        metadata={"description": "PENDING or RETRYING tasks whose message is in Redis"},
    )
    running = fields.Integer(required=True, metadata={"description": "RUNNING tasks"})
    workers = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "Workers consuming this executor whose heartbeat is fresh (30 s); "
            "null when Redis could not be read"
        },
    )
    slots = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "Tasks those workers run at once (the sum of their concurrency); "
            "a worker serving several executors counts in each; null when Redis could not be "
            "read"
        },
    )
    oldestWaitingAge = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "Milliseconds since the oldest due task not yet running (waiting or "
            "dispatched) became due: its runAt or backoff end, else its submission; null when "
            "none is due"
        },
    )


class QueueListSchema(Schema):
    items = fields.List(fields.Nested(QueueSchema), required=True)


def queue_json(queue: QueueSnapshot) -> dict[str, Any]:
    """One executor's queue, as GET /api/v1/queues lists it."""
    return {
        "executor": queue.executor,
        "waiting": queue.waiting,
        "dispatched": queue.dispatched,
        "running": queue.running,
        "workers": queue.workers,
        "slots": queue.slots,
        "oldestWaitingAge": queue.oldest_waiting_age_ms,
    }


def queue_list(queues: list[QueueSnapshot]) -> dict[str, Any]:
    """Every executor's queue, by name."""
    return {"items": [queue_json(q) for q in queues]}
