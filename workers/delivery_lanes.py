"""How many lanes a subscription's sends want: its attempt times, learned as attempts end."""

from __future__ import annotations

import math
import time
import uuid

#: A subscription's sends run in lanes: a lane sends one delivery after another (the next
#: from the hold when one ends), and a subscription gets more lanes, up to its cap, only when
#: one would not keep up. A send per thread instead (each delivery handed to an idle thread,
#: up to the cap at once) woke a thread per delivery and set the threads fighting for the
#: GIL: measured against a local receiver at 500 deliveries/s, 328 us of CPU per request and
#: 16 context switches, against 104 us and 1 for the same requests sent one after another.
#: A burst should be sent within about this long: a subscription gets as many lanes as its
#: deliveries in flight and held, times its recent attempt time, over this (at least one).
LANE_BUDGET_SECONDS = 0.05
#: Held deliveries that waited this long while their subscription's lanes finished nothing:
#: one more lane (within the cap). A receiver that slows down is sent to in parallel again
#: before its attempt times show it (they are known only when its attempts end).
LANE_WAIT_SECONDS = 0.05
#: The weight of the newest attempt in a subscription's running mean of attempt time.
ATTEMPT_TIME_WEIGHT = 0.2
#: Subscriptions whose attempt time is remembered, at most (then forgotten and learned anew).
ATTEMPT_TIMES_KEPT = 10_000


class AttemptTimes:
    """Each subscription's running mean of attempt time, and when its last attempt ended.

    Not locked: an attempt's end is noted by its lane, and a lost update only delays the mean
    by one attempt. A subscription not noted yet (not sent to by this process) wants its cap.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._known: dict[uuid.UUID, tuple[float, float]] = {}  # mean seconds, ended (monotonic)

    def note(self, w: uuid.UUID, seconds: float) -> None:
        """Fold an attempt's time into subscription w's mean."""
        last = self._known.get(w)
        if last is None and len(self._known) >= ATTEMPT_TIMES_KEPT:
            self._known.clear()
        took = seconds if last is None else last[0] + ATTEMPT_TIME_WEIGHT * (seconds - last[0])
        self._known[w] = (took, time.monotonic())

    def lanes(self, w: uuid.UUID, pending: int) -> int:
        """Lanes for w's `pending` deliveries (in flight and held): enough to send them within
        LANE_BUDGET_SECONDS at its mean attempt time, at least one, at most the cap."""
        known = self._known.get(w)
        if known is None:
            return self.cap
        return max(1, min(self.cap, math.ceil(pending * known[0] / LANE_BUDGET_SECONDS)))

    def idle(self, w: uuid.UUID, now: float) -> bool:
        """Whether no attempt of w ended in the last LANE_WAIT_SECONDS (or none ever did)."""
        known = self._known.get(w)
        return known is None or now - known[1] > LANE_WAIT_SECONDS
