"""Workers die under load: killed pool children, killed main processes, graceful shutdowns."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

import pytest

from tests.reliability.cluster import connect
from tests.reliability.ledger import Ledger
from tests.reliability.nemesis import Nemesis, running_pids, submit_mix
from tests.reliability.scenario import Scenario, scaled

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: A warm shutdown waits for running tasks (here under a second), and each pool child then
#: waits up to 30 s for the parent to read its last result (billiard's handshake); that wait
#: is occasionally spent in full (see docs/guarantees.md), so this is the honest bound.
WARM_SHUTDOWN_BOUND = 35.0


def test_sigkill_of_random_pool_children_loses_nothing(scenario: Scenario) -> None:
    cluster = scenario.cluster
    cluster.start_workers(3, concurrency=2)
    cluster.start_sweeper()
    ledger = scenario.ledger("sigkill-children")
    rng = random.Random(1)

    def kill_a_child() -> bool:
        pid = cluster.pick_child(running_pids(ledger), rng)
        if pid is None:
            return False
        at = time.time()
        os.kill(pid, signal.SIGKILL)
        ledger.fault("kill-child", at, pids=[pid])
        return True

    rounds = scaled(15)
    nemesis = Nemesis(kill_a_child, rounds, pause=(0.4, 0.9), rng=rng, first_pause=1.0)
    nemesis.start()
    # Submitted faster than six children drain it: they stay busy, so kills hit attempts.
    submit_mix(ledger, scaled(300), rng, spread=rounds * 0.65 * 0.5)
    struck = nemesis.finish()
    ledger.settle(timeout=120)
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert struck >= rounds * 0.8, f"only {struck} of {rounds} kills found a child"
    assert len(verdict.recovery) >= rounds // 3, "too few kills hit a running attempt"
    assert verdict.counts.get("COMPLETED", 0) >= verdict.tasks - 3 * verdict.faults


def test_sigkill_of_a_worker_main_process_loses_nothing(scenario: Scenario) -> None:
    cluster = scenario.cluster
    steady = cluster.start_worker(concurrency=2, wait=False)
    victim = cluster.start_worker(concurrency=2, wait=False)
    cluster.wait_ready([steady, victim])
    cluster.start_sweeper()
    ledger = scenario.ledger("sigkill-main")
    rng = random.Random(2)

    def kill_the_main_process() -> None:
        if not victim.running():
            cluster.restart_worker(victim)
        pids = [victim.pid, *victim.children()]
        at = time.time()
        cluster.kill_main(victim)
        ledger.fault("kill-main", at, pids=pids)
        time.sleep(rng.uniform(0.2, 1.0))
        cluster.restart_worker(victim)

    rounds = scaled(4)
    nemesis = Nemesis(kill_the_main_process, rounds, pause=(1.5, 2.5), rng=rng, first_pause=1.5)
    nemesis.start()
    submit_mix(ledger, scaled(250), rng, spread=rounds * 4.5)
    struck = nemesis.finish()
    ledger.settle(timeout=120)
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert struck == rounds
    assert steady.running(), "the worker that was left alone died"
    assert verdict.recovery, "no kill hit a running attempt: the scenario proved nothing"


def test_sigterm_lets_running_tasks_finish_and_hands_back_the_rest(scenario: Scenario) -> None:
    cluster = scenario.cluster
    steady = cluster.start_worker(concurrency=2, wait=False)
    victim = cluster.start_worker(concurrency=2, wait=False)
    cluster.wait_ready([steady, victim])
    cluster.start_sweeper()
    ledger = scenario.ledger("sigterm")
    rng = random.Random(3)
    shutdowns: list[float] = []

    def terminate_gracefully() -> None:
        if not victim.running():
            cluster.restart_worker(victim)
        at = time.time()
        shutdowns.append(cluster.terminate(victim, timeout=WARM_SHUTDOWN_BOUND + 15))
        ledger.fault("sigterm", at, time.time(), pids=[victim.pid])
        cluster.restart_worker(victim)

    rounds = scaled(3)
    nemesis = Nemesis(terminate_gracefully, rounds, pause=(1.0, 2.0), rng=rng, first_pause=1.0)
    nemesis.start()
    submit_mix(ledger, scaled(200), rng, spread=rounds * 4.0)
    nemesis.finish()
    ledger.settle(timeout=120)
    ledger.notes["shutdown_max"] = f"{max(shutdowns):.1f}s"
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    # A warm shutdown finishes what runs and returns what it had reserved: nothing twice.
    assert verdict.extra_attempts == 0, verdict.explain()
    assert max(shutdowns) < WARM_SHUTDOWN_BOUND, f"a warm shutdown took {max(shutdowns):.1f}s"


def test_sigterm_then_sigkill_hands_a_long_task_back(scenario: Scenario) -> None:
    cluster = scenario.cluster
    victim = cluster.start_worker(concurrency=1)
    cluster.start_sweeper()
    ledger = scenario.ledger("sigterm-then-kill")
    task_id = ledger.submit("sleep", {"seconds": 6})
    assert task_id is not None
    wait_until_running(ledger, task_id)
    steady = cluster.start_worker(concurrency=1)
    # The orchestrator's stop: SIGTERM, a grace window shorter than the task, then SIGKILL.
    at = time.time()
    victim.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    pids = [victim.pid, *victim.children()]
    cluster.reap(victim)
    ledger.fault("sigterm-then-kill", at, time.time(), pids=pids)
    ledger.settle(timeout=60)
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert verdict.counts == {"COMPLETED": 1} and verdict.extra_attempts == 1
    assert verdict.recovery and max(verdict.recovery) < scenario.settings.lease_seconds + 3
    assert steady.running()


def wait_until_running(ledger: Ledger, task_id: str, timeout: float = 30) -> None:
    """Wait until the task's first attempt has started."""
    deadline = time.monotonic() + timeout
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT status FROM tasks WHERE id = %s", (task_id,))
            if cur.fetchone()[0] == "RUNNING":
                return
            time.sleep(0.05)
    raise AssertionError(f"{task_id} never started")
