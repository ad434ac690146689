"""The queues per executor for operators and autoscalers: GET /api/v1/queues."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify

from api import openapi
from api.auth import requires
from api.parsing import Blueprint
from api.responses.queues import QueueListSchema, queue_list
from api.services import services
from shared import queues

blp = Blueprint(
    "queues",
    __name__,
    url_prefix="/api/v1/queues",
    description="Queues per executor: waiting, dispatched, running, workers and slots",
)

#: Where the app keeps its heartbeat reader (a Redis client: thread-safe, connects lazily).
_READER = "taskexec_queue_reader"


def _redis() -> Any:
    client = current_app.extensions.get(_READER)
    if client is None:
        # Two first requests at once may both make one; either serves, the other is dropped.
        client = current_app.extensions.setdefault(
            _READER, queues.redis_client(services().settings.redis_url)
        )
    return client


@blp.route("", methods=["GET"], strict_slashes=False)
@requires("tasks:admin")
@blp.doc(
    operationId="listQueues",
    responses=openapi.responses({200: openapi.ok(QueueListSchema, "Every executor's queue")}),
)
def list_queues() -> Response:
    """Every executor's queue now, by name: what an operator or an autoscaler reads.

    Response 200: {"items": [{"executor": "standard-executor", "waiting": 12,
                              "dispatched": 40, "running": 8, "workers": 2, "slots": 8,
                              "oldestWaitingAge": 1530}]}
    `waiting`: PENDING or RETRYING with no message in Redis yet (delayed, in a retry's backoff,
    held back); `dispatched`: PENDING or RETRYING with a message in Redis; `running`: RUNNING;
    manual tasks are not counted. `workers` and `slots` (the sum of their concurrency) come
    from the workers' heartbeats (fresh within 30 s); null when Redis cannot be read.
    `oldestWaitingAge`: milliseconds since the oldest due task not yet running became due
    (null when none). Every executor a definition names, a task uses or a worker consumes is
    listed, idle ones with zeros. Needs tasks:admin: it counts every owner's tasks.
    """
    svc = services()
    return jsonify(queue_list(queues.snapshot(svc.db, _redis())))
