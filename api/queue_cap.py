"""The cap on queued work: at most TASKEXEC_MAX_QUEUED_PER_PRINCIPAL tasks not yet running.

Counting a principal's queued tasks on every submission would cost what the queue holds (a
million index entries at the cap). Each API process instead counts an owner's queued tasks
(PENDING or RETRYING), stopping at the cap, at most once a second while the owner holds half
the cap or more and once every `RELAXED_TTL` seconds below that, and adds what it accepted
since. So the cap holds to within what the other API processes accept in that second.
"""

from __future__ import annotations

import threading
import time

from shared import store
from shared.db import Database

#: Seconds a count is trusted while the owner has half the cap or more, and while below.
NEAR_TTL = 1.0
RELAXED_TTL = 5.0
#: Owners remembered before the stale ones are forgotten.
MAX_OWNERS = 10_000


class QueueCap:
    """Per-owner queued counts, refreshed now and then, plus what this process added."""

    def __init__(self, db: Database, cap: int) -> None:
        self.db = db
        self.cap = cap
        self._lock = threading.Lock()
        # owner -> (when counted, count then, accepted by this process since)
        self._seen: dict[str, tuple[float, int, int]] = {}

    def allowance(self, owner: str, wanted: int) -> int:
        """How many of `wanted` new tasks `owner` may queue now (they are counted as taken)."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(owner)
        if seen is None or now - seen[0] > self._ttl(seen[1] + seen[2]):
            with self.db.connection(autocommit=True) as conn:
                counted = store.count_queued(conn, owner, self.cap)
            with self._lock:
                if len(self._seen) > MAX_OWNERS:
                    self._seen = {o: s for o, s in self._seen.items() if now - s[0] < RELAXED_TTL}
                self._seen[owner] = (now, counted, 0)
        with self._lock:
            at, counted, added = self._seen[owner]
            granted = max(min(wanted, self.cap - counted - added), 0)
            self._seen[owner] = (at, counted, added + granted)
        return granted

    def _ttl(self, known: int) -> float:
        return RELAXED_TTL if known < self.cap // 2 else NEAR_TTL
