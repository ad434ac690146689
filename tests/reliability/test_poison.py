"""A task that kills its worker process every time is capped, and the rest keeps flowing."""

from __future__ import annotations

import random
import time

import pytest

from tests.reliability.nemesis import submit_mix
from tests.reliability.scenario import Scenario, scaled

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_poison_task_fails_worker_lost_after_a_capped_number_of_attempts(
    scenario: Scenario,
) -> None:
    cluster = scenario.cluster
    workers = cluster.start_workers(2, concurrency=2)
    cluster.start_sweeper()
    ledger = scenario.ledger("poison")
    rng = random.Random(8)
    cap = scenario.settings.max_worker_lost

    poisons = []
    started = time.time()
    for _ in range(scaled(3)):
        task_id = ledger.submit("poison", {})  # its definition allows ten attempts
        assert task_id is not None
        poisons.append(task_id)
        submit_mix(ledger, 70, rng, spread=1.5)
    ledger.settle(timeout=90)
    ledger.notes["poison_done_in"] = f"{ledger.last_end(poisons) - started:.1f}s"
    verdict = ledger.verdict()
    ledger.report(verdict)

    # The ledger checks each poison task ended FAILED WORKER_LOST within the cap, and that
    # every other task completed in one attempt: the poison killed nothing but itself.
    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert verdict.counts == {
        "FAILED/WORKER_LOST": len(poisons),
        "COMPLETED": verdict.tasks - len(poisons),
    }
    assert verdict.extra_attempts == len(poisons) * (cap - 1), "each poison ran exactly cap times"
    assert all(w.running() and len(w.incarnations) == 1 for w in workers)
