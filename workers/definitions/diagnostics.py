"""Diagnostic built-ins for trying the service and its lifecycle: echo, sleep, flaky, memory.

Opt-in: listed in TASKEXEC_DEFINITION_MODULES (`taskexec dev` and the tests list it).
"""

from __future__ import annotations

import time
from typing import Any

from shared.definitions import RetryPolicy, TaskContext, TaskDefinition
from shared.errors import RetryableTaskError, TaskFailure
from shared.status import TaskType

_ANY_OBJECT = {"type": "object"}


def echo(data: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Return the input unchanged."""
    return data


#: Sleep reports progress at most this often, and at most PROGRESS_UPDATES times in all: each
#: report is a write to the ledger.
PROGRESS_EVERY_SECONDS = 0.5
PROGRESS_UPDATES = 100


def sleep(data: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Sleep `seconds`, checking for a cancel every 50 ms and reporting progress as it goes.

    Two flags make it misbehave on purpose, standing in for a handler stuck in code that cannot
    be interrupted: `ignoreCancel` never checks the cancel flag (the worker escalates to
    SIGTERM/SIGKILL after the grace period) and `ignoreSoftLimit` sleeps on through the soft
    time limit (the worker kills it at the hard limit).
    """
    seconds = float(data["seconds"])
    check = not data.get("ignoreCancel", False)
    stubborn = bool(data.get("ignoreSoftLimit", False))
    started = time.monotonic()
    deadline = started + seconds
    report_every = max(PROGRESS_EVERY_SECONDS, seconds / PROGRESS_UPDATES)
    next_report = started
    try:
        while True:
            try:
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    break
                if now >= next_report:
                    elapsed = now - started
                    ctx.progress(elapsed / seconds, f"{elapsed:.1f}s of {seconds:g}s")
                    next_report = now + report_every
                if check:
                    ctx.check_cancelled()
                time.sleep(min(left, 0.05))
            except TaskFailure:
                raise
            except Exception:  # the soft time limit, as the worker raises it
                if not stubborn:
                    raise
    except BaseException as exc:
        # Whatever stops us early, there is a moment to clean up; say so in the task's log.
        elapsed = time.monotonic() - started
        ctx.log(f"sleep interrupted after {elapsed:.3f}s by {type(exc).__name__}", "WARNING")
        raise
    return {"slept": round(time.monotonic() - started, 3)}


def flaky(data: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    """Fail the first `failTimes` attempts, then succeed."""
    if ctx.attempt <= int(data.get("failTimes", 1)):
        raise RetryableTaskError(
            f"flaky failure on attempt {ctx.attempt}", {"attempt": ctx.attempt}
        )
    return {"attempts": ctx.attempt}


def allocate_memory(data: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    """Allocate and touch `megabytes` MiB, hold them briefly, then free them."""
    size = int(data["megabytes"]) * 1024 * 1024
    block = bytearray(size)
    for offset in range(0, size, 4096):  # touch every page so it is really resident
        block[offset] = 1
    time.sleep(float(data.get("holdSeconds", 0)))
    return {"allocated": int(data["megabytes"])}


ECHO = TaskDefinition(
    id="echo",
    name="Echo",
    description="Returns its input as its output",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema=_ANY_OBJECT,
    output_schema=_ANY_OBJECT,
    handler=echo,
    timeout_ms=60_000,
)

SLEEP = TaskDefinition(
    id="sleep",
    name="Sleep",
    description="Sleeps for a number of seconds; cancellable, for timeouts and cancellation",
    type=TaskType.AUTOMATED,
    version="1.1.0",
    input_schema={
        "type": "object",
        "properties": {
            "seconds": {"type": "number", "minimum": 0, "maximum": 86400},
            "ignoreCancel": {"type": "boolean"},
            "ignoreSoftLimit": {"type": "boolean"},
        },
        "required": ["seconds"],
    },
    output_schema={
        "type": "object",
        "properties": {"slept": {"type": "number"}},
        "required": ["slept"],
    },
    handler=sleep,
    timeout_ms=3_600_000,
)

FLAKY = TaskDefinition(
    id="flaky",
    name="Flaky",
    description="Fails its first failTimes attempts, then succeeds; for retries",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={
        "type": "object",
        "properties": {"failTimes": {"type": "integer", "minimum": 0, "maximum": 100}},
    },
    output_schema={
        "type": "object",
        "properties": {"attempts": {"type": "integer"}},
        "required": ["attempts"],
    },
    handler=flaky,
    timeout_ms=60_000,
    retry_policy=RetryPolicy(max_retries=3, retry_interval=200, backoff_multiplier=2),
)

ALLOCATE_MEMORY = TaskDefinition(
    id="allocate-memory",
    name="Allocate Memory",
    description="Allocates megabytes of memory; beyond its 128Mi requirement it ends OUT_OF_MEMORY",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={
        "type": "object",
        "properties": {
            "megabytes": {"type": "integer", "minimum": 0, "maximum": 65536},
            "holdSeconds": {"type": "number", "minimum": 0, "maximum": 60},
        },
        "required": ["megabytes"],
    },
    output_schema={
        "type": "object",
        "properties": {"allocated": {"type": "integer"}},
        "required": ["allocated"],
    },
    handler=allocate_memory,
    timeout_ms=60_000,
    resource_requirements={"cpu": "0.1", "memory": "128Mi", "timeoutSeconds": 60},
)

DEFINITIONS = (ECHO, SLEEP, FLAKY, ALLOCATE_MEMORY)
