"""How an attempt fails and when it is tried again: error documents, failures, backoff."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import store
from shared.definitions import RetryPolicy
from shared.status import ErrorKind, Status


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


def timeout_failure(task: store.Task | store.ClaimedTask, killed: bool) -> Failure:
    """The failure of an attempt that ran out of time; retried only if the policy says so."""
    message = f"the attempt exceeded its timeout of {task.timeout_ms} ms"
    if killed:
        message += " and was killed"
    return Failure(
        error_doc("TIMEOUT", message, ErrorKind.TASK_ERROR),
        status=Status.TIMED_OUT,
        retryable=RetryPolicy.from_json(task.retry_policy).retry_on_timeout,
    )


def worker_lost_failure(task: store.Task, why: str) -> Failure:
    """The failure of an attempt whose process died under it."""
    where = f"{task.worker_host}:{task.worker_pid}"
    return Failure(
        error_doc(
            "WORKER_LOST",
            f"the worker process running attempt {task.attempts} ({where}) {why}",
            ErrorKind.WORKER_LOST,
        ),
        worker_lost=True,
    )


def oom_killed_failure(task: store.Task) -> Failure:
    """The failure of an attempt whose process the kernel's OOM killer ended; not retried.

    As with a handler over its own memory limit, a retry would most likely meet the same end.
    """
    where = f"{task.worker_host}:{task.worker_pid}"
    return Failure(
        error_doc(
            "OUT_OF_MEMORY",
            f"the kernel's OOM killer ended the worker process running attempt {task.attempts}"
            f" ({where})",
            ErrorKind.OUT_OF_MEMORY,
        ),
        retryable=False,
    )


def retry_delay_ms(
    policy: RetryPolicy, failed_attempt: int, rand: Callable[[], float] = random.random
) -> int:
    """Milliseconds before the attempt after `failed_attempt`, jitter included.

    The base is `retryInterval * backoffMultiplier^(n-1)`; jitter only ever adds to it (up to
    `jitter` times the base), so a retry never starts before the documented delay.
    """
    delay = policy.delay_ms(failed_attempt)
    if policy.jitter:
        delay += int(delay * policy.jitter * rand())
    return delay
