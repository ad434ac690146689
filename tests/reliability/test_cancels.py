"""Cancels racing completion, and cancels of queued tasks across worker restarts."""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
import time
import uuid

import pytest

from tests.reliability.cluster import connect
from tests.reliability.conftest import Scenario, scaled
from tests.reliability.ledger import Ledger
from tests.reliability.nemesis import submit_mix

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def attempt_counts(ledger: Ledger, task_ids: list[str]) -> dict[str, int]:
    """Count the attempt rows of each task."""
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT t.id, count(a.attempt) FROM tasks t LEFT JOIN task_attempts a"
            " ON a.task_id = t.id WHERE t.id = ANY(%s) GROUP BY t.id",
            ([uuid.UUID(t) for t in task_ids],),
        )
        return {str(row[0]): row[1] for row in cur.fetchall()}


class BoundaryCanceller(threading.Thread):
    """Cancels each target when its attempt should be finishing, give or take `spread`."""

    def __init__(self, ledger: Ledger, targets: dict[str, float], rng: random.Random) -> None:
        super().__init__(name="canceller", daemon=True)
        self.ledger = ledger
        self.targets = dict(targets)  # task id -> seconds its handler sleeps
        self.rng = rng
        self.responses: list[int] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
        finally:
            self.done.set()

    def _run(self) -> None:
        waiting = dict(self.targets)
        due: list[tuple[float, str, bool]] = []
        deadline = time.monotonic() + 120
        with contextlib.closing(connect(self.ledger.settings.database_url)) as conn:
            while (waiting or due) and time.monotonic() < deadline:
                if waiting:
                    with conn.cursor() as cur:
                        cur.execute(
                            "SELECT id, extract(epoch FROM start_time) FROM tasks"
                            " WHERE id = ANY(%s) AND start_time IS NOT NULL",
                            ([uuid.UUID(t) for t in waiting],),
                        )
                        for task_id, started in cur.fetchall():
                            seconds = waiting.pop(str(task_id))
                            at = float(started) + seconds + self.rng.uniform(-0.1, 0.1)
                            force = self.rng.random() < 0.5
                            heapq.heappush(due, (at, str(task_id), force))
                now = time.time()
                while due and due[0][0] <= now:
                    _, task_id, force = heapq.heappop(due)
                    self.responses.append(self.ledger.cancel(task_id, force=force))
                time.sleep(0.005)


def test_cancel_at_the_completion_boundary_ends_one_way_only(scenario: Scenario) -> None:
    cluster = scenario.cluster
    cluster.start_workers(3, concurrency=2)
    cluster.start_sweeper()
    ledger = scenario.ledger("cancel-boundary")
    rng = random.Random(6)
    targets: dict[str, float] = {}
    canceller: BoundaryCanceller | None = None
    for number in range(scaled(240)):
        if number % 3 == 0:
            # Bystanders: a cancel that killed the wrong process would show up on these.
            ledger.submit("sleep", {"seconds": round(rng.uniform(0.05, 0.3), 3)})
        else:
            seconds = round(rng.uniform(0.1, 0.3), 3)
            task_id = ledger.submit("sleep", {"seconds": seconds})
            assert task_id is not None
            targets[task_id] = seconds
        time.sleep(0.03)
    canceller = BoundaryCanceller(ledger, targets, rng)
    canceller.start()
    canceller.join(150)
    assert not canceller.is_alive() and canceller.error is None, canceller.error
    ledger.settle(timeout=60)
    codes = sorted(set(canceller.responses))
    ledger.notes["cancels"] = {c: canceller.responses.count(c) for c in codes}
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert len(canceller.responses) == len(targets), "some cancels were never sent"
    # The race was real: some cancels won (200), some came just too late (409).
    assert canceller.responses.count(200) >= 5 and canceller.responses.count(409) >= 5, codes
    # Every task ran once: a cancel never killed a bystander (that would be a second attempt).
    assert verdict.extra_attempts == 0, verdict.explain()


def test_cancelled_queued_tasks_never_run_across_worker_restarts(scenario: Scenario) -> None:
    cluster = scenario.cluster
    cluster.start_sweeper()
    ledger = scenario.ledger("cancel-queued")
    rng = random.Random(7)
    # No worker yet: everything waits in Redis; two of three are cancelled while queued.
    submit_mix(ledger, scaled(300), rng, spread=1.0, sleep_range=(0.02, 0.1))
    submitted = list(ledger.tasks)
    cancelled = [t for n, t in enumerate(submitted) if n % 3]
    assert all(ledger.cancel(t, force=n % 2 == 0) == 200 for n, t in enumerate(cancelled))

    # Workers come and go while the queue still holds the cancelled tasks' messages.
    workers = cluster.start_workers(2, concurrency=2)
    for round_ in range(scaled(2)):
        time.sleep(1.0)
        for worker in workers:
            at = time.time()
            if round_ % 2:
                cluster.kill_main(worker)
                cluster.reap(worker)
            else:
                cluster.terminate(worker, timeout=30)
            ledger.fault("restart", at, time.time(), pids=worker.incarnations)
            cluster.restart_worker(worker)
    ledger.settle(timeout=90)
    verdict = ledger.verdict()
    ran = {t: n for t, n in attempt_counts(ledger, cancelled).items() if n}
    ledger.notes["cancelled_that_ran"] = len(ran)
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert not ran, f"{len(ran)} cancelled tasks started anyway: {list(ran)[:5]}"
    assert verdict.counts == {
        "CANCELLED": len(cancelled),
        "COMPLETED": len(submitted) - len(cancelled),
    }
