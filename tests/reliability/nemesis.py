"""The nemesis: a thread that injects faults at random intervals while the test submits work."""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import psycopg2

from tests.reliability.cluster import connect
from tests.reliability.ledger import Ledger

#: Nemeses started and not yet finished; the scenario fixture stops any a failed test left.
RUNNING: list[Nemesis] = []


class Nemesis(threading.Thread):
    """Calls `strike` `rounds` times, a random pause apart; re-raises its errors on `join`."""

    def __init__(
        self,
        strike: Callable[[], Any],
        rounds: int,
        pause: tuple[float, float],
        rng: random.Random,
        first_pause: float | None = None,
    ) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.strike = strike
        self.rounds = rounds
        self.pause = pause
        self.rng = rng
        self.first_pause = first_pause
        self.struck = 0
        self.stopped = threading.Event()
        self.error: str | None = None

    def start(self) -> None:
        RUNNING.append(self)
        super().start()

    def stop(self) -> None:
        """Strike no more (teardown of a failed test)."""
        self.stopped.set()
        self.join(60)

    def run(self) -> None:
        try:
            for number in range(self.rounds):
                wait = self.rng.uniform(*self.pause)
                if number == 0 and self.first_pause is not None:
                    wait = self.first_pause
                if self.stopped.wait(wait):
                    return
                if self.strike() is not False:
                    self.struck += 1
        except Exception:  # noqa: BLE001 - reported to the test thread
            self.error = traceback.format_exc()

    def finish(self, timeout: float = 300) -> int:
        """Wait for the last round; raise if a strike failed; return how many struck."""
        self.join(timeout)
        if self.is_alive():
            self.stopped.set()
            self.join(10)
            raise AssertionError("the nemesis did not finish its rounds in time")
        if self.error:
            raise AssertionError(f"the nemesis failed:\n{self.error}")
        return self.struck


def running_pids(ledger: Ledger) -> set[int]:
    """The worker pids that run an attempt right now, as the ledger says."""
    try:
        with connect(ledger.settings.database_url, timeout=2) as conn, conn.cursor() as cur:
            cur.execute("SELECT worker_pid FROM tasks WHERE status = 'RUNNING'")
            pids = {row[0] for row in cur.fetchall()}
        conn.close()
        return pids
    except psycopg2.OperationalError:
        return set()


def submit_mix(
    ledger: Ledger,
    count: int,
    rng: random.Random,
    spread: float,
    sleep_range: tuple[float, float] = (0.05, 0.3),
) -> None:
    """Submit `count` short echo and sleep tasks over about `spread` seconds."""
    pause = spread / max(count, 1)
    for number in range(count):
        started = time.monotonic()
        if number % 3 == 0:
            ledger.submit("echo", {"n": number, "payload": "x" * rng.randint(0, 200)})
        else:
            ledger.submit("sleep", {"seconds": round(rng.uniform(*sleep_range), 3)})
        time.sleep(max(pause - (time.monotonic() - started), 0))
