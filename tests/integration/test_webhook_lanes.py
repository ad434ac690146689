"""A subscription's sends run in lanes: one for a fast receiver, up to its cap for a slow one."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for
from tests.integration import test_webhook_delivery as base

# The delivery tests' fixtures (pytest finds fixtures among a module's names).
_empty_tables = base._empty_tables
receiver = base.receiver
deliverer = base.deliverer
webhook_settings = base.webhook_settings
finish_tasks, subscribe = base.finish_tasks, base.subscribe

pytestmark = pytest.mark.integration


def test_a_fast_receivers_burst_is_sent_on_one_lane_not_a_thread_each(
    backends, receiver, deliverer
):
    subscribe(backends.database_url, receiver.url("/fast"))
    runner = deliverer(webhook_subscription_concurrency=8)
    finish_tasks(backends.database_url, 1)  # the first send teaches its attempt time
    wait_for(lambda: len(receiver.at("/fast")) == 1, 10)
    opened = runner.lanes_opened
    finish_tasks(backends.database_url, 10)  # one fan-out batch
    wait_for(lambda: len(receiver.at("/fast")) == 11, 10)
    # A send per thread opened one per delivery up to the cap (8); a lane sends them in
    # turn. (A few lanes only if this machine answered in more than ~15 ms a request.)
    assert runner.lanes_opened - opened <= 3


def test_a_receiver_that_slows_down_gets_its_parallel_sends_back(backends, receiver, deliverer):
    receiver.plan["/slowing"] = [200, 0]  # the first answers at once, the rest after 0.5 s
    receiver.hang_seconds = 0.5
    subscribe(backends.database_url, receiver.url("/slowing"))
    runner = deliverer(webhook_subscription_concurrency=4)
    finish_tasks(backends.database_url, 1)
    wait_for(lambda: len(receiver.at("/slowing")) == 1, 10)
    finish_tasks(backends.database_url, 8)
    wait_for(lambda: len(receiver.at("/slowing")) == 9, 10)
    arrivals = sorted(r["at"] for r in receiver.at("/slowing"))[1:]
    # Learned fast, the burst starts on one lane; while that lane finishes nothing, each
    # round (every poll) opens one more, up to the cap: the 8 arrive within about two
    # answers' time, not eight (4 s on one lane).
    assert arrivals[-1] - arrivals[0] < 2.0
    # Never more than the cap (4) at once: any five requests span a whole answer's wait.
    assert all(b - a > 0.4 for a, b in zip(arrivals, arrivals[4:], strict=False))
    assert runner.lanes_opened >= 4
