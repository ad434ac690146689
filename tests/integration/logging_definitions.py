"""A test-only definition that logs lines slowly, for following a task's log (CLI tests)."""

from __future__ import annotations

import time
from typing import Any

from shared.definitions import TaskContext, TaskDefinition
from shared.status import TaskType
from workers.definitions import with_diagnostics

MODULE = with_diagnostics(__name__)


def slow_log(data: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    """Log `lines` lines, `pause` seconds apart, stopping early on a cancel."""
    lines = int(data["lines"])
    for n in range(1, lines + 1):
        ctx.check_cancelled()
        ctx.log(f"line {n} of {lines}", "WARNING" if n == lines else "INFO")
        time.sleep(float(data.get("pause", 0)))
    return {"lines": lines}


SLOW_LOGGER = TaskDefinition(
    id="test-slow-logger",
    name="Slow logger (tests)",
    description="Logs a line every pause seconds",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={
        "type": "object",
        "properties": {"lines": {"type": "integer", "minimum": 1}, "pause": {"type": "number"}},
        "required": ["lines"],
    },
    output_schema={"type": "object"},
    handler=slow_log,
    timeout_ms=120_000,
)

DEFINITIONS = [SLOW_LOGGER]
