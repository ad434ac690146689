"""Concurrency limits: the limits a task is under, their names, and how a hold is described.

A task may be under three limits at once, each counting RUNNING tasks across the fleet:
its definition's `concurrencyLimit`, its submission's `executionConfig.concurrency`
(`{key, limit}`, scoped to the owner) and its principal's `maxRunning`. Each limit has a name
(`definition:<id>`, `key:<owner>:<key>`, `principal:<owner>`): the advisory lock a claim
takes for it, and what a held-back task's `held_on` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFINITION = "definition"
KEY = "key"
PRINCIPAL = "principal"


@dataclass(frozen=True)
class Limit:
    """One limit a task is under: its kind, its name, its maximum RUNNING, what it counts.

    A definition's limit counts that definition's limited tasks, a key's the owner's tasks
    with that key, a principal's the owner's tasks submitted under a `maxRunning`.
    """

    kind: str
    name: str
    limit: int
    owner: str = ""
    definition: str = ""
    key: str = ""


def definition_name(definition_id: str) -> str:
    return f"{DEFINITION}:{definition_id}"


def key_name(owner: str, key: str) -> str:
    return f"{KEY}:{owner}:{key}"


def principal_name(owner: str) -> str:
    return f"{PRINCIPAL}:{owner}"


def is_limited(
    definition_limit: int | None, concurrency_key: str | None, owner_limit: int | None
) -> bool:
    """Say whether a task with these columns is under any concurrency limit (a key's limit
    comes with its key)."""
    return definition_limit is not None or concurrency_key is not None or owner_limit is not None


def limits_of(
    *,
    owner: str,
    task_definition_id: str,
    definition_limit: int | None,
    concurrency_key: str | None,
    key_limit: int | None,
    owner_limit: int | None,
) -> list[Limit]:
    """The limits a task with these columns is under, sorted by name (the lock order)."""
    found = []
    if definition_limit is not None:
        name = definition_name(task_definition_id)
        found.append(Limit(DEFINITION, name, definition_limit, definition=task_definition_id))
    if concurrency_key is not None and key_limit is not None:
        name = key_name(owner, concurrency_key)
        found.append(Limit(KEY, name, key_limit, owner=owner, key=concurrency_key))
    if owner_limit is not None:
        found.append(Limit(PRINCIPAL, principal_name(owner), owner_limit, owner=owner))
    return sorted(found, key=lambda limit: limit.name)


def hold_details(
    held_on: str,
    *,
    task_definition_id: str,
    concurrency_key: str | None,
    definition_limit: int | None,
    key_limit: int | None,
    owner_limit: int | None,
) -> dict[str, Any]:
    """What a CONCURRENCY_LIMIT reason's details say: which limit, and its maximum."""
    kind = held_on.split(":", 1)[0]
    if kind == DEFINITION:
        return {
            "limit": DEFINITION,
            "taskDefinitionId": task_definition_id,
            "max": definition_limit,
        }
    if kind == KEY:
        return {"limit": KEY, "key": concurrency_key, "max": key_limit}
    return {"limit": PRINCIPAL, "max": owner_limit}
