"""A test-only definition reporting progress and log lines (TASKEXEC_DEFINITION_MODULES)."""

from __future__ import annotations

import logging
from typing import Any

from shared.definitions import TaskContext, TaskDefinition
from shared.status import TaskType
from workers.definitions import with_diagnostics

MODULE = with_diagnostics(__name__)
log = logging.getLogger(__name__)


def report(data: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    """Work through `steps` steps, reporting each to the client and to the process log."""
    steps = int(data.get("steps", 3))
    for step in range(1, steps + 1):
        ctx.log(f"step {step} of {steps}")
        ctx.progress(step / steps, f"{step}/{steps}")
        log.info("handler finished step %d", step)
    ctx.log("all steps done", "warning")
    return {"steps": steps}


REPORTER = TaskDefinition(
    id="test-reporter",
    name="Reporter (tests)",
    description="Reports progress and log lines through its context",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={"type": "object", "properties": {"steps": {"type": "integer", "minimum": 1}}},
    output_schema={"type": "object"},
    handler=report,
    timeout_ms=60_000,
)

DEFINITIONS = [REPORTER]
