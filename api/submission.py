"""Turning a validated request into stored, published tasks (single, bulk, idempotent)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api.metrics import SUBMITTED
from api.services import Services
from shared import outbox, store
from shared.credentials import Principal
from shared.errors import (
    IdempotencyConflict,
    QueueFull,
    ServiceUnavailable,
    TaskexecError,
)

log = logging.getLogger(__name__)

#: How often a submission is retried after losing an idempotency race (one retry suffices
#: unless the winning key expires in between).
_RACE_RETRIES = 3


def request_hash(body: dict[str, Any]) -> str:
    """Fingerprint a submission for idempotency (the key itself excluded)."""
    canonical = {k: v for k, v in body.items() if k != "idempotencyKey"}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Accepted:
    """A stored task and whether this request created it (False: an idempotent replay)."""

    task: store.Task
    created: bool


#: What became of one submitted row: accepted (created or replayed), or refused.
Outcome = Accepted | TaskexecError
#: (idempotency key, request hash) of a row, or None without a key.
Key = tuple[str, str] | None


def store_and_publish(
    svc: Services, principal: Principal, rows: Sequence[store.NewTask], keys: Sequence[Key] = ()
) -> list[Outcome]:
    """Insert rows in one transaction, bind their idempotency keys, publish after commit.

    A key already bound (by this principal) to the same request replays the original task;
    bound to a different request, that row is refused with IdempotencyConflict and the
    others go ahead. Within one batch a repeated key behaves the same way: the first row
    with it decides. Losing a race to a concurrent request raises _Retry (rolled back).
    """
    if not any(keys):
        # No idempotency keys: the rows need only an INSERT, shared with concurrent requests.
        tasks = svc.group_commit.submit(
            rows, functools.partial(_insert, svc), functools.partial(_publish_after, svc)
        )
        return [Accepted(task, created=True) for task in tasks]
    keys = list(keys) or [None] * len(rows)
    outcomes: list[Outcome | None] = [None] * len(rows)
    fresh: list[int] = []
    repeats: list[tuple[int, int]] = []  # (row, the earlier row of the batch with its key)
    with svc.db.connection() as conn:
        first_with: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key is None:
                fresh.append(index)
                continue
            name, digest = key
            if name in first_with:
                earlier = first_with[name]
                if keys[earlier] == key:
                    repeats.append((index, earlier))
                else:
                    outcomes[index] = _conflict(name, None)
                continue
            first_with[name] = index
            record = store.get_idempotency(conn, principal.subject, name)
            if record is None:
                fresh.append(index)
            elif record.request_hash != digest:
                outcomes[index] = _conflict(name, record.task_id)
            else:
                outcomes[index] = Accepted(_existing(conn, record.task_id), created=False)
        inserted = store.insert_tasks(conn, [rows[i] for i in fresh], _open_windows(svc, rows))
        by_id = {task.id: task for task in inserted}
        for index in fresh:
            task = by_id[rows[index].id]
            key = keys[index]
            if key is not None:
                bound = store.claim_idempotency(
                    conn, principal.subject, key[0], key[1], task.id, svc.settings.idempotency_ttl
                )
                if bound is None or bound.task_id != task.id:
                    # A concurrent request with the same key committed first: undo ours
                    # and run again, which then replays theirs.
                    raise _Retry()
            outcomes[index] = Accepted(task, created=True)
        for index, earlier in repeats:
            first = outcomes[earlier]
            outcomes[index] = (
                Accepted(first.task, created=False) if isinstance(first, Accepted) else first
            )
    publish([o.task for o in outcomes if isinstance(o, Accepted) and o.created], svc)
    done = [o for o in outcomes if o is not None]
    assert len(done) == len(rows)
    return done


def _insert(svc: Services, rows: Sequence[store.NewTask]) -> list[store.Task]:
    """Write rows with one INSERT (a group commit's flush; the batch is published after it).

    One statement is atomic on its own: autocommit spares the BEGIN and COMMIT round trips.
    """
    open_windows = _open_windows(svc, rows)
    with svc.db.connection(autocommit=True) as conn:
        return store.insert_tasks(conn, rows, open_windows)


def _publish_after(svc: Services, tasks: Sequence[store.Task]) -> None:
    publish(tasks, svc)


def _open_windows(svc: Services, rows: Sequence[store.NewTask]) -> set[uuid.UUID]:
    """The rows that may be published at once: as many of each executor's as its window has
    room for (a cached view of Redis), first ones first.

    A row past the room waits in Postgres for the releaser, which sends it as room opens,
    round robin across owners (docs/architecture.md, "Release").
    """
    by_executor: dict[str, list[uuid.UUID]] = {}
    for r in rows:
        if r.published and not r.limited:
            by_executor.setdefault(r.executor, []).append(r.id)
    return {
        i
        for executor, ids in by_executor.items()
        for i in ids[: svc.window.grant(executor, len(ids))]
    }


def _conflict(key: str, task_id: uuid.UUID | None) -> IdempotencyConflict:
    details: dict[str, Any] = {"field": "idempotencyKey", "issue": "already used", "key": key}
    if task_id is not None:
        details["taskId"] = str(task_id)
    return IdempotencyConflict("this idempotency key was used with a different request", details)


class _Retry(Exception):
    """Internal: an idempotency race was lost; the transaction rolled back."""


def _existing(conn: store.Conn, task_id: uuid.UUID) -> store.Task:
    task = store.get_task(conn, task_id)
    if task is None:  # the task was deleted while its key lived on
        raise ServiceUnavailable("the idempotent replay's task is gone; retry without the key")
    return task


def submit_each(
    svc: Services, principal: Principal, rows: Sequence[store.NewTask], keys: Sequence[Key] = ()
) -> list[Outcome]:
    """Store and publish, one outcome per row; a lost idempotency race is retried.

    Rows past the principal's cap on queued work (TASKEXEC_MAX_QUEUED_PER_PRINCIPAL) are
    refused one by one with QueueFull (429 QUEUE_FULL), the first ones going ahead.
    """
    granted = svc.queue_cap.allowance(principal.subject, len(rows))
    refused: list[Outcome] = [_queue_full(svc)] * (len(rows) - granted)
    rows, keys = rows[:granted], keys[:granted]
    if not rows:
        return refused
    for _ in range(_RACE_RETRIES):
        try:
            outcomes = store_and_publish(svc, principal, rows, keys)
        except _Retry:
            continue
        for outcome in outcomes:
            if isinstance(outcome, Accepted) and outcome.created:  # a replay creates nothing
                SUBMITTED.labels(outcome.task.task_definition_id).inc()
        return outcomes + refused
    raise ServiceUnavailable("the idempotency key is contended; retry the request")


def _queue_full(svc: Services) -> QueueFull:
    cap = svc.settings.max_queued_per_principal
    return QueueFull(
        f"you have {cap} tasks not yet running, the most allowed; retry once some have started",
        {"maxQueued": cap},
    )


def submit(
    svc: Services, principal: Principal, rows: Sequence[store.NewTask], keys: Sequence[Key] = ()
) -> list[Accepted]:
    """Store and publish rows that must all be accepted; raise the first refusal."""
    outcomes = submit_each(svc, principal, rows, keys)
    for outcome in outcomes:
        if isinstance(outcome, TaskexecError):
            raise outcome
    return [o for o in outcomes if isinstance(o, Accepted)]


def publish(tasks: Sequence[store.Task], svc: Services) -> None:
    """Publish after commit; what fails stays in Postgres for the sweeper (still a 201).

    Only rows the insert stamped published: a manual task never gets a message, and a
    delayed one waits in Postgres until the sweeper releases it when it falls due.
    """
    dispatches = [outbox.Dispatch.of(t) for t in tasks if t.published_at is not None]
    outbox.publish(svc.broker, svc.db, dispatches)
