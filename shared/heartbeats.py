"""Workers up, as the API sees them: each worker refreshes its entry in one Redis sorted set.

A worker's main process adds itself (its node name, queues and slots: the tasks it runs at
once) with Redis's own clock as the score every HEARTBEAT_SECONDS, from the loop that also
consumes its messages, and removes itself at shutdown; the API counts the entries refreshed
within STALE_AFTER_SECONDS, dropping older ones as it reads. One small script each way: a
round trip per beat and per scrape, and no clock of ours is compared with another host's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: The sorted set of live workers: member = JSON [node, [queues], slots], score = last beat
#: (Redis time). A member without slots (a worker of an earlier release) reads slots None.
KEY = "taskexec:workers"
HEARTBEAT_SECONDS = 10.0
#: Three missed beats: a worker this quiet is down, or cut off from the broker (so idle anyway).
STALE_AFTER_SECONDS = 30.0

# TIME is Redis's clock; effects replication (the default since Redis 5) lets a script write
# after reading it.
_BEAT = """
if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], now[1] + now[2] / 1e6, ARGV[1])
return 1
"""
_ALIVE = """
if redis.replicate_commands then redis.replicate_commands() end
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now[1] + now[2] / 1e6 - tonumber(ARGV[1]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


@dataclass(frozen=True)
class Worker:
    """A worker up: its node name, the queues (executors) it consumes, its slots if known."""

    node: str
    queues: tuple[str, ...]
    slots: int | None


def member(node: str, queues: list[str], slots: int | None = None) -> str:
    """The set member that names a worker, the queues it consumes and its slots.

    Fixed for the worker's life (its concurrency does not change), so `leave` removes the
    very member `beat` wrote.
    """
    if slots is None:
        return json.dumps([node, sorted(queues)])
    return json.dumps([node, sorted(queues), slots])


def beat(client: Any, node: str, queues: list[str], slots: int | None = None) -> None:
    """Say this worker is up (call every HEARTBEAT_SECONDS)."""
    client.eval(_BEAT, 1, KEY, member(node, queues, slots))


def leave(client: Any, node: str, queues: list[str], slots: int | None = None) -> None:
    """Say this worker stopped (at a warm shutdown; a killed one goes stale instead)."""
    client.zrem(KEY, member(node, queues, slots))


def workers(client: Any, stale_after: float = STALE_AFTER_SECONDS) -> list[Worker]:
    """Every worker that beat within `stale_after` seconds, by node name."""
    found: dict[str, Worker] = {}
    for raw in client.eval(_ALIVE, 1, KEY, stale_after):
        try:
            node, queues, *rest = json.loads(raw)
            slots = int(rest[0]) if rest and rest[0] is not None else None
        except (TypeError, ValueError):
            continue  # not ours: never let one odd entry cost the scrape
        found[str(node)] = Worker(str(node), tuple(str(q) for q in queues), slots)
    return [found[node] for node in sorted(found)]


def alive(client: Any, stale_after: float = STALE_AFTER_SECONDS) -> dict[str, list[str]]:
    """Return the queues of every worker that beat within `stale_after` seconds, by node."""
    return {w.node: list(w.queues) for w in workers(client, stale_after)}
