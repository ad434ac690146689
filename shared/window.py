"""The dispatch window: how many messages an executor's queue in Redis may hold, and its room.

Redis holds only a bounded window of ready work per executor: `TASKEXEC_DISPATCH_WINDOW_PER_SLOT`
messages per slot of the live workers that consume it (their heartbeats say how many tasks
each runs at once), never fewer than `TASKEXEC_DISPATCH_WINDOW_MIN`. Everything beyond waits in
Postgres, where the releaser chooses what goes next, fairly between owners. The depth is the
length of the queue's Redis lists; messages a worker has taken but not yet claimed are not in
it (prefetch is one per slot, so at most a slot's worth more).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from config.settings import Settings
from shared import heartbeats
from shared.broker import BROKER_ERRORS, Broker

#: How long the workers' slots (from their heartbeats) are reused before being read again.
SLOTS_TTL_SECONDS = 2.0


class Window:
    """Per-executor window size and room, from Redis (the queues' depth, the heartbeats).

    Shared by every thread of a process. `grant` serves the API's submit path from a view at
    most `open_ttl` seconds old, so a submission costs Redis one read per executor per
    `open_ttl`, not one per request; being that stale only lets the window overshoot by what
    the workers took meanwhile.
    """

    def __init__(self, settings: Settings, broker: Broker, open_ttl: float = 0.05) -> None:
        self.settings = settings
        self.broker = broker
        self.open_ttl = open_ttl
        self._lock = threading.Lock()
        self._slots: dict[str, int] = {}
        self._slots_at = -SLOTS_TTL_SECONDS
        self._room: dict[str, tuple[float, int]] = {}  # executor -> (when read, room left)

    def slots(self) -> dict[str, int]:
        """Slots of the live workers, by executor (a worker of several counts in each)."""
        now = time.monotonic()
        if now - self._slots_at < SLOTS_TTL_SECONDS:
            return self._slots
        found: dict[str, int] = {}
        for worker in heartbeats.workers(self.broker.client()):
            for queue in worker.queues:
                # A worker that does not say (an earlier release) counts as one slot.
                found[queue] = found.get(queue, 0) + (worker.slots or 1)
        with self._lock:
            self._slots, self._slots_at = found, now
        return found

    def size(self, executor: str) -> int:
        """How many messages the executor's queue may hold."""
        slots = self.slots().get(executor, 0)
        return max(
            self.settings.dispatch_window_min, self.settings.dispatch_window_per_slot * slots
        )

    def room(self, executors: Iterable[str]) -> dict[str, int]:
        """Messages each executor's queue may still take (0 when full), in two round trips."""
        wanted = sorted(set(executors))
        if not wanted:
            return {}
        depths = self.broker.queue_depths(wanted)
        return {e: max(self.size(e) - depths.get(e, 0), 0) for e in wanted}

    def grant(self, executor: str, wanted: int) -> int:
        """How many of `wanted` new messages may go to `executor`'s queue now (taken from it).

        Served from a view of the room at most `open_ttl` old, spent as it is granted, so one
        batch (a bulk request, a group commit) never sends more than the room, and requests
        within `open_ttl` share it. Redis unreachable: all of them, stamped as before (the
        outbox leaves them to the sweeper when the publish fails; the window cannot be read
        then anyway).
        """
        now = time.monotonic()
        with self._lock:
            seen = self._room.get(executor)
        if seen is None or now - seen[0] >= self.open_ttl:
            try:
                seen = (now, self.room([executor])[executor])
            except BROKER_ERRORS:
                return wanted
        with self._lock:
            at, room = self._room.get(executor, seen) if seen[0] != now else seen
            granted = max(min(wanted, room), 0)
            self._room[executor] = (at, room - granted)
        return granted

    def is_open(self, executor: str) -> bool:
        """Whether one more message may go to `executor`'s queue now (and take its place)."""
        return self.grant(executor, 1) > 0
