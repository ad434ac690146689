"""The task context (task id, definition, attempt, worker) on every log record of a running task."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from config.logging import CONTEXT_FIELDS

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "taskexec_log_context", default=None
)
# Contexts open in this process, per thread: a thread the attempt starts (the lease watcher)
# does not inherit context variables, so it falls back to the one attempt running here.
_open: dict[int, list[dict[str, Any]]] = {}
_lock = threading.Lock()


def current() -> dict[str, Any]:
    """Return the task context of the calling code; empty when no attempt (or several) runs."""
    mine = _current.get()
    if mine is not None:
        return mine
    with _lock:
        stacks = [stack for stack in _open.values() if stack]
    # Only unambiguous: with a thread pool running several attempts, a stray thread gets none.
    return stacks[0][-1] if len(stacks) == 1 else {}


def enter(**fields: Any) -> tuple[contextvars.Token[dict[str, Any] | None], dict[str, Any]]:
    """Open a context (merged over the enclosing one); pass the result to `leave`."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    merged = {**(_current.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _current.set(merged)
    with _lock:
        _open.setdefault(threading.get_ident(), []).append(merged)
    return token, merged


def leave(opened: tuple[contextvars.Token[dict[str, Any] | None], dict[str, Any]]) -> None:
    """Close a context opened by `enter` (in the same thread)."""
    token, merged = opened
    _current.reset(token)
    with _lock:
        stack = _open.get(threading.get_ident(), [])
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is merged:
                del stack[index]
                break
        if not stack:
            _open.pop(threading.get_ident(), None)


@contextmanager
def task_log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Make every record logged inside carry `fields` (task_id, definition, attempt, worker)."""
    opened = enter(**fields)
    try:
        yield opened[1]
    finally:
        leave(opened)


class TaskContextFilter(logging.Filter):
    """Adds the current task context to records; fields a record already has (`extra=`) win."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of `logger` (the root): it sees each propagated record.

    A handler filter rather than a record factory: a factory would set the attributes before
    `extra=` is applied, and logging refuses to overwrite them (KeyError).
    """
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
            handler.addFilter(TaskContextFilter())


def connect_celery_signals() -> None:
    """Open a context (task id, definition, worker node) around each Celery task this runs."""
    from celery import signals

    install()
    opened: dict[str, Any] = {}

    @signals.task_prerun.connect(weak=False, dispatch_uid="taskexec-log-context-open")
    def _open_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        definition = getattr(task, "definition", None)
        if task_id is None or definition is None:
            return  # not one of ours
        worker = getattr(getattr(task, "request", None), "hostname", None)
        opened[task_id] = enter(task_id=task_id, definition=definition.id, worker=worker)

    @signals.task_postrun.connect(weak=False, dispatch_uid="taskexec-log-context-close")
    def _close_context(task_id: str | None = None, **_: Any) -> None:
        context = opened.pop(task_id, None) if task_id is not None else None
        if context is not None:
            leave(context)
