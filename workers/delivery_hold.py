"""Deliveries a deliverer leased beyond its sends in flight: held per subscription, given back."""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import KeysView
from datetime import UTC, datetime

import psycopg2

from shared import store
from shared.db import Database
from shared.errors import TaskexecError

log = logging.getLogger(__name__)

#: The fan-out leases, per subscription, up to this many times its cap beyond the sends in
#: flight (within the pool's free room): held here and started one by one as the
#: subscription's sends finish, with no claim statement. The cap binds at the bench's rate
#: (one subscription, 8 in flight, ~30 new deliveries a poll): leasing only the free room
#: took 8 of 2,988 deliveries in an in-process run at ~500/s, the rest went through claims
#: of ~4 rows each; with 3 x the cap held, ~37%.
HOLD_FACTOR = 3
#: A held delivery is started only while its lease has this long left after the attempt's
#: longest (connect and answer, each the timeout); otherwise it is given back, due now.
HOLD_MARGIN_SECONDS = 5.0


class HeldDeliveries:
    """Leased deliveries waiting for their subscription's room, with their bodies, in order.

    Not locked itself: the deliverer changes it under the lock of its sends in flight (whether
    a delivery is held or sent depends on them).
    """

    def __init__(self, database: Database, attempt_seconds: float) -> None:
        self.db = database
        # The lease a held delivery must still have to be started: the attempt's longest.
        self.min_lease_seconds = attempt_seconds + HOLD_MARGIN_SECONDS
        # Per subscription, in order: (delivery, body, monotonic time it was held).
        self._queues: dict[uuid.UUID, deque[tuple[store.Claimed, bytes, float]]] = {}
        self.total = 0

    def __contains__(self, webhook_id: object) -> bool:
        return webhook_id in self._queues

    def subscriptions(self) -> KeysView[uuid.UUID]:
        """The subscriptions with deliveries held."""
        return self._queues.keys()

    def count(self, webhook_id: uuid.UUID) -> int:
        """How many of a subscription's deliveries are held."""
        return len(self._queues.get(webhook_id, ()))

    def add(self, item: store.Claimed, body: bytes) -> None:
        """Hold a leased delivery behind its subscription's others."""
        self._queues.setdefault(item.webhook_id, deque()).append((item, body, time.monotonic()))
        self.total += 1

    def waited(self, webhook_id: uuid.UUID, seconds: float) -> int:
        """How many of a subscription's held deliveries have waited `seconds` or longer."""
        since = time.monotonic() - seconds
        found = 0
        for _, _, held_at in self._queues.get(webhook_id, ()):
            if held_at > since:
                break  # held in order: the rest are younger
            found += 1
        return found

    def next(
        self, webhook_id: uuid.UUID, stale: list[store.Claimed]
    ) -> tuple[store.Claimed, bytes] | None:
        """The next held delivery of a subscription worth starting, taken off the hold.

        One whose lease would not outlast the attempt goes to `stale`, to be given back.
        """
        held = self._queues.get(webhook_id)
        found = None
        while held:
            item, body, _ = held.popleft()
            self.total -= 1
            left = (item.locked_until - datetime.now(UTC)).total_seconds()
            if left > self.min_lease_seconds:
                found = (item, body)
                break
            stale.append(item)
        if held is not None and not held:
            del self._queues[webhook_id]
        return found

    def take_all(self) -> list[store.Claimed]:
        """Empty the hold; return what it held (to be given back)."""
        items = [item for held in self._queues.values() for item, _, _ in held]
        self._queues.clear()
        self.total = 0
        return items

    def give_back(self, items: list[store.Claimed]) -> None:
        """Give leased deliveries back unsent, due now, their attempt uncounted."""
        if not items:
            return
        try:
            with self.db.connection(autocommit=True) as conn:
                store.release_deliveries(conn, items)
        except (TaskexecError, psycopg2.Error) as exc:
            # Not given back: the leases lapse and the deliveries are claimed then.
            log.warning("%d held delivery(ies) not given back: %s", len(items), exc)
