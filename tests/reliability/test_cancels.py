"""Cancels racing completion, and cancels of queued tasks across worker restarts."""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
import time
import uuid
from typing import Any

import pytest

from tests.reliability.cluster import connect
from tests.reliability.ledger import Ledger
from tests.reliability.nemesis import submit_mix
from tests.reliability.scenario import Scenario, scaled

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
    """Cancels each target when its attempt should be finishing, give or take 100 ms."""

    def __init__(self, ledger: Ledger, rng: random.Random) -> None:
        super().__init__(name="canceller", daemon=True)
        self.ledger = ledger
        self.rng = rng
        self.waiting: dict[str, float] = {}  # task id -> seconds its handler sleeps
        self.lock = threading.Lock()
        self.closed = threading.Event()  # no more targets will come
        self.responses: list[int] = []
        self.error: BaseException | None = None

    def add(self, task_id: str, seconds: float) -> None:
        with self.lock:
            self.waiting[task_id] = seconds

    def run(self) -> None:
        try:
            with contextlib.closing(connect(self.ledger.settings.database_url)) as conn:
                self._run(conn)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc

    def _run(self, conn: Any) -> None:
        due: list[tuple[float, str, bool]] = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            with self.lock:
                waiting = dict(self.waiting)
            if not (waiting or due) and self.closed.is_set():
                return
            if waiting:
                with conn.cursor() as cur:
                    # start_time is when the claim committed: the attempt ends `seconds` later.
                    cur.execute(
                        "SELECT id, extract(epoch FROM start_time) FROM tasks"
                        " WHERE id = ANY(%s) AND start_time IS NOT NULL",
                        ([uuid.UUID(t) for t in waiting],),
                    )
                    for task_id, started in cur.fetchall():
                        seconds = waiting[str(task_id)]
                        with self.lock:
                            del self.waiting[str(task_id)]
                        at = float(started) + seconds + self.rng.uniform(-0.1, 0.1)
                        heapq.heappush(due, (at, str(task_id), self.rng.random() < 0.5))
            while due and due[0][0] <= time.time():
                _, task_id, force = heapq.heappop(due)
                self.responses.append(self.ledger.cancel(task_id, force=force))
            time.sleep(0.005)


def test_cancel_at_the_completion_boundary_ends_one_way_only(scenario: Scenario) -> None:
    cluster = scenario.cluster
    cluster.start_workers(3, concurrency=2)
    cluster.start_sweeper()
    ledger = scenario.ledger("cancel-boundary")
    rng = random.Random(6)
    canceller = BoundaryCanceller(ledger, random.Random(60))
    canceller.start()
    targets = 0
    for number in range(scaled(240)):
        seconds = round(rng.uniform(0.1, 0.3), 3)
        task_id = ledger.submit("sleep", {"seconds": seconds})
        assert task_id is not None
        # One in three is a bystander: a cancel that killed the wrong process would show there.
        if number % 3:
            canceller.add(task_id, seconds)
            targets += 1
        time.sleep(0.04)
    canceller.closed.set()
    canceller.join(150)
    assert not canceller.is_alive() and canceller.error is None, canceller.error
    ledger.settle(timeout=60)
    codes = sorted(set(canceller.responses))
    ledger.notes["cancels"] = {c: canceller.responses.count(c) for c in codes}
    verdict = ledger.verdict()
    ledger.report(verdict)

    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert len(canceller.responses) == targets, "some cancels were never sent"
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
                cluster.terminate(worker, timeout=50)  # see WARM_SHUTDOWN_BOUND
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
