"""A test definition that allocates memory with no limit of its own, for the kernel's OOM killer."""

from __future__ import annotations

from typing import Any

from shared.definitions import RetryPolicy, TaskContext, TaskDefinition
from shared.status import TaskType
from workers.definitions import with_diagnostics
from workers.definitions.diagnostics import allocate_memory

MODULE = with_diagnostics(__name__)


def hog(data: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    """Allocate and touch `megabytes` MiB: only a cgroup's limit (or the machine's) stops it."""
    return allocate_memory(data, ctx)


HOG = TaskDefinition(
    id="test-hog",
    name="Memory Hog (tests)",
    description="allocate-memory without a resource requirement: no RLIMIT_DATA of its own",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={"type": "object", "required": ["megabytes"]},
    output_schema={"type": "object"},
    handler=hog,
    timeout_ms=60_000,
    retry_policy=RetryPolicy(max_retries=3, retry_interval=100, backoff_multiplier=1),
)

DEFINITIONS = [HOG]
