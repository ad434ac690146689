"""A test-only definition that kills the worker process running it, every time."""

from __future__ import annotations

import os
import signal
from typing import Any

from shared.definitions import RetryPolicy, TaskContext, TaskDefinition
from shared.status import TaskType


def poison(data: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Die by SIGKILL, as a segfault in C code or the kernel's OOM killer would end it."""
    os.kill(os.getpid(), signal.SIGKILL)
    return data  # never reached


POISON = TaskDefinition(
    id="poison",
    name="Poison",
    description="Test only: kills the worker process that runs it",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={"type": "object"},
    output_schema={"type": "object"},
    handler=poison,
    timeout_ms=30_000,
    # Retries would allow ten attempts: only the worker-lost cap can stop it sooner.
    retry_policy=RetryPolicy(max_retries=10, retry_interval=100, backoff_multiplier=1),
)

DEFINITIONS = (POISON,)
