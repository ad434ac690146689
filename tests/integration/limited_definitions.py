"""Test definitions under a concurrency limit (loaded through TASKEXEC_DEFINITION_MODULES)."""

from __future__ import annotations

from shared.definitions import RetryPolicy, TaskDefinition
from shared.status import TaskType
from workers.definitions import with_diagnostics
from workers.definitions.diagnostics import sleep

MODULE = with_diagnostics(__name__)

LIMITED_SLEEP = TaskDefinition(
    id="limited-sleep",
    name="Sleep, one at a time (tests)",
    description="sleep under concurrencyLimit 1: at most one RUNNING across the fleet",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0}},
        "required": ["seconds"],
    },
    output_schema={"type": "object"},
    handler=sleep,
    timeout_ms=60_000,
    # A task whose worker is killed runs again once its lease is rescued.
    retry_policy=RetryPolicy(max_retries=3, retry_interval=100, backoff_multiplier=1),
    concurrency_limit=1,
)

DEFINITIONS = [LIMITED_SLEEP]
