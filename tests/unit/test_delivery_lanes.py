"""A subscription's lanes follow its attempt times: one for a fast receiver, the cap for a slow."""

from __future__ import annotations

import time
import uuid

from workers.delivery_lanes import ATTEMPT_TIMES_KEPT, LANE_WAIT_SECONDS, AttemptTimes


def test_a_subscription_not_sent_to_yet_gets_its_cap_and_counts_as_idle() -> None:
    times = AttemptTimes(cap=8)
    w = uuid.uuid4()
    assert times.lanes(w, pending=1) == 8
    assert times.idle(w, time.monotonic())


def test_lanes_follow_the_mean_attempt_time_within_one_and_the_cap() -> None:
    times = AttemptTimes(cap=8)
    fast, slow = uuid.uuid4(), uuid.uuid4()
    times.note(fast, 0.001)
    times.note(slow, 0.1)
    assert times.lanes(fast, pending=20) == 1  # 20 x 1 ms within the 50 ms budget
    assert times.lanes(fast, pending=120) == 3  # 120 ms of sends: three lanes
    assert times.lanes(slow, pending=2) == 4  # 200 ms of sends: four lanes
    assert times.lanes(slow, pending=30) == 8  # never past the cap
    assert times.lanes(fast, pending=0) == 1  # never below one


def test_the_mean_moves_a_fifth_of_the_way_to_each_new_attempt() -> None:
    times = AttemptTimes(cap=100)
    w = uuid.uuid4()
    times.note(w, 0.001)
    times.note(w, 0.101)  # mean 0.021
    assert times.lanes(w, pending=10) == 5  # ceil(10 x 0.021 / 0.05)


def test_a_subscription_is_idle_once_no_attempt_ended_for_the_wait() -> None:
    times = AttemptTimes(cap=8)
    w = uuid.uuid4()
    times.note(w, 0.001)
    now = time.monotonic()
    assert not times.idle(w, now)
    assert times.idle(w, now + LANE_WAIT_SECONDS + 0.01)


def test_past_the_bound_the_learned_times_are_forgotten() -> None:
    times = AttemptTimes(cap=8)
    first = uuid.uuid4()
    times.note(first, 0.001)
    for _ in range(ATTEMPT_TIMES_KEPT - 1):
        times.note(uuid.uuid4(), 0.001)
    times.note(uuid.uuid4(), 0.001)  # one more than kept: all forgotten, this one learned
    assert times.lanes(first, pending=1) == 8
