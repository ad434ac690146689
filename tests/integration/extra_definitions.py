"""Test-only definitions, loaded into workers through TASKEXEC_DEFINITION_MODULES."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from shared.definitions import RetryPolicy, TaskContext, TaskDefinition
from shared.status import TaskType
from workers.definitions import with_diagnostics
from workers.definitions.diagnostics import sleep

# Workers load the diagnostic built-ins too: the tests that load this module use sleep and echo.
MODULE = with_diagnostics(__name__)
REMOTE_EXECUTOR = "remote-test-executor"
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def deaf_sleep(data: dict[str, Any], ctx: TaskContext) -> dict[str, float]:
    """Sleep `seconds` ignoring the cancel flag, every exception and SIGTERM: only SIGKILL works."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.monotonic()
    try:
        while time.monotonic() - started < float(data["seconds"]):
            try:
                time.sleep(0.05)
            except Exception:  # noqa: BLE001, S112 - deaf on purpose
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {"slept": round(time.monotonic() - started, 3)}


def self_destruct(data: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Kill the process running this attempt, as the kernel's OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # never reached
    return {}


def remote_echo(data: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Return the input and the process that ran it."""
    return {"input": data, "pid": os.getpid()}


DEAF_SLEEP = TaskDefinition(
    id="test-deaf-sleep",
    name="Deaf Sleep (tests)",
    description="Sleeps ignoring cancel flags, soft limits and SIGTERM",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0}},
        "required": ["seconds"],
    },
    output_schema=_ANY_OBJECT,
    handler=deaf_sleep,
    timeout_ms=600_000,
)

SELF_DESTRUCT = TaskDefinition(
    id="test-self-destruct",
    name="Self Destruct (tests)",
    description="Kills its own worker process every attempt",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema=_ANY_OBJECT,
    output_schema=_ANY_OBJECT,
    handler=self_destruct,
    timeout_ms=60_000,
    retry_policy=RetryPolicy(max_retries=10, retry_interval=100, backoff_multiplier=1),
)

REMOTE_ECHO = TaskDefinition(
    id="test-remote-echo",
    name="Remote Echo (tests)",
    description="Echo on an executor pool of its own",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema=_ANY_OBJECT,
    output_schema=_ANY_OBJECT,
    handler=remote_echo,
    timeout_ms=60_000,
    executor=REMOTE_EXECUTOR,
)

SHORT_SLEEP = TaskDefinition(
    id="test-short-sleep",
    name="Short Sleep (tests)",
    description="The built-in sleep with a definition timeout of half a second",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={"type": "object", "required": ["seconds"]},
    output_schema=_ANY_OBJECT,
    handler=sleep,
    timeout_ms=500,
)

DEFINITIONS = (DEAF_SLEEP, SELF_DESTRUCT, REMOTE_ECHO, SHORT_SLEEP)
