"""Celery settings for at-least-once delivery over Redis, each with the reason it is set."""

from __future__ import annotations

from typing import Any

from config.settings import Settings

#: Queue a definition's tasks go to when it names no executor.
DEFAULT_QUEUE = "standard-executor"


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Return the Celery configuration shared by the producer (API, sweeper) and the workers."""
    return {
        "broker_url": settings.redis_url,
        # Postgres is the ledger; nothing ever reads Celery results.
        "result_backend": None,
        "task_ignore_result": True,
        # JSON only: a message must never be able to run code when it is decoded.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the attempt is recorded, so a worker dying mid-task leaves the message
        # to be redelivered; the claim's compare-and-set turns duplicates into no-ops.
        "task_acks_late": True,
        # A child killed by a signal or the OOM killer: requeue rather than drop the message.
        "task_reject_on_worker_lost": True,
        # Take one message at a time so a busy worker does not sit on tasks others could run
        # and priorities are honoured across the queue.
        "worker_prefetch_multiplier": 1,
        "task_default_queue": DEFAULT_QUEUE,
        "task_create_missing_queues": True,
        "broker_transport_options": {
            # Redelivery of unacked messages only after this; it must exceed the longest
            # attempt (hard time limit) or a running task would be delivered twice. Dead
            # workers are found much sooner by the lease sweeper.
            "visibility_timeout": settings.visibility_timeout,
            # Ten priority levels served lowest number first; see shared/status.py.
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        "task_default_priority": 6,
        # Reconnect forever: a worker outlives a Redis restart rather than crash-looping.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 3,
        "broker_heartbeat": 0,
        # A publish must not hang the API when Redis is down: two quick tries, then the
        # task stays unpublished in Postgres and the sweeper publishes it later.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_pool_limit": 10,
        # Events let Flower show workers and tasks; they cost a publish per state change.
        "worker_send_task_events": settings.worker_events,
        # No task-sent event: it costs the API a second publish per submission (half of the
        # publish time in the profile) and Flower learns of each task from the worker anyway.
        "task_send_sent_event": False,
        # Revoked ids live in worker memory; keep enough for bursts of cancels.
        "worker_state_db": None,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_track_started": False,
        "worker_max_memory_per_child": None,
        "enable_utc": True,
        "timezone": "UTC",
    }
