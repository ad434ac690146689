"""The steady load of a partition scenario: single and bulk submits and cancels, over HTTP.

Accounting is the fault suite's `Ledger`: every task that got a 201 is tracked and judged
against the final ledger. What it adds: bulk submits (each item accepted or refused alone),
cancels of tracked tasks (some forced), faults that name the hosts they cut off, and what
each API host answered while a link was cut.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests.partitions.fleet import Fleet, HttpApi, connect
from tests.reliability.ledger import RETRY_POLICY, SLACK, Fault, Ledger, Tracked

#: Loads started and not yet stopped; the scenario fixture stops any a failed test left.
RUNNING: list[Load] = []
#: After a heal, stale connections are found by their TCP timeouts and leases run out once
#: more: an attempt that started this long after the heal was not touched by the cut.
AFTERMATH = 12.0


@dataclass
class Cut(Fault):
    """A partition: `hosts` are the host names cut off (worker hosts' attempts it may touch).

    A cut of an API or sweeper host names no worker host, so no attempt may blame it: such a
    partition must cost no execution at all.
    """

    hosts: frozenset[str] = frozenset()

    def touches(self, attempt: dict[str, Any]) -> bool:
        if attempt["worker_host"] not in self.hosts:
            return False
        begin = attempt["started_at"].timestamp()
        end = attempt["ended_at"].timestamp() if attempt["ended_at"] else float("inf")
        return begin <= self.ended + AFTERMATH and end >= self.started - SLACK


class PartitionLedger(Ledger):
    """The fault suite's ledger, driving the API hosts over HTTP, with bulk submits."""

    def __init__(self, scenario: str, fleet: Fleet, headers: dict[str, str]) -> None:
        self.api = HttpApi(fleet)
        super().__init__(scenario, self.api, headers, fleet.settings)
        self.fleet = fleet
        self.bulk_items: Counter[str] = Counter()  # item outcome: "accepted" or an error code
        self.cuts: list[Cut] = []
        #: The load's own tasks, the only ones it cancels: a scenario's probes and the long
        #: task it cuts a host under must run their course, or its expectations are moot.
        self.cancellable: list[str] = []

    def cut(self, kind: str, started: float, ended: float, hosts: list[str]) -> Cut:
        fault = Cut(kind, started, ended, hosts=frozenset(self.fleet.hostname(h) for h in hosts))
        with self._lock:
            self.faults.append(fault)
            self.cuts.append(fault)
        return fault

    def submit_bulk(self, items: list[dict[str, Any]]) -> list[str]:
        """POST a bulk submit; track each accepted item; count each refused one by its code."""
        for item in items:
            item.setdefault("executionConfig", {"retryPolicy": RETRY_POLICY})
        try:
            response = self.client().post(
                "/api/v1/tasks/bulk", json={"tasks": items}, headers=self.headers
            )
        except Exception as exc:  # noqa: BLE001 - the API must answer, whatever happens
            with self._lock:
                self.responses[-1] += 1
                self.problems.append(f"bulk submit raised {type(exc).__name__}: {exc}")
            return []
        accepted = []
        with self._lock:
            if response.status_code != 201:
                self.responses[response.status_code] += 1
                if response.status_code != 503:
                    self.problems.append(f"bulk submit answered {response.status_code}")
                return []
            self.responses[201] += 1
            for item, result in zip(items, response.get_json()["items"], strict=True):
                if "id" in result:
                    self.tasks[result["id"]] = Tracked(
                        result["id"], item["taskDefinitionId"], item["input"], time.time()
                    )
                    self.bulk_items["accepted"] += 1
                    accepted.append(result["id"])
                else:
                    code = result["error"]["code"]
                    self.bulk_items[code] += 1
                    if code != "SERVICE_UNAVAILABLE":
                        self.problems.append(f"bulk item refused {code}: {result['error']}")
        return accepted

    def answered(self, host: str, since: float, until: float) -> Counter[int]:
        """What `host` answered to submits sent between two moments (monotonic clock)."""
        return Counter(
            status
            for (at, where, kind, status, _) in self.api.log
            if where == host and kind == "submit" and since <= at <= until
        )

    def rejoined(self, host: str, since: float) -> float | None:
        """Seconds from `since` (epoch) until a worker host started an attempt again."""
        with contextlib.closing(connect(self.settings.database_url)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT extract(epoch FROM min(started_at)) FROM task_attempts"
                " WHERE worker_host = %s AND started_at > to_timestamp(%s)",
                (self.fleet.hostname(host), since),
            )
            row = cur.fetchone()
        return float(row[0]) - since if row and row[0] is not None else None


class Load(threading.Thread):
    """Submits singles and bulks and cancels tracked tasks until stopped, a few per second.

    Two of them keep the fleet's six worker slots about half busy: a partition shows in what
    it costs, not behind a backlog of the load's own making.
    """

    def __init__(self, ledger: PartitionLedger, rng: random.Random, pace: float = 0.15) -> None:
        super().__init__(name="load", daemon=True)
        self.ledger = ledger
        self.rng = rng
        self.pace = pace
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        RUNNING.append(self)
        super().start()

    def stop(self) -> None:
        self.stopped.set()
        self.join(60)
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)
        if self.error is not None:
            raise AssertionError(f"the load failed: {self.error!r}")

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.pace):
                self.step()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.6:
            self._own([self.ledger.submit(*self.task())])
        elif roll < 0.7:
            self._own(self.ledger.submit_bulk([self.item() for _ in range(self.rng.randint(2, 6))]))
        else:
            with self.ledger._lock:
                ids = self.ledger.cancellable[-50:]
            if ids:
                self.ledger.cancel(self.rng.choice(ids), force=self.rng.random() < 0.3)

    def _own(self, ids: Iterable[str | None]) -> None:
        """Mark tasks the load submitted as ones it may cancel (both loads share the list)."""
        with self.ledger._lock:
            self.ledger.cancellable.extend(i for i in ids if i)

    def task(self) -> tuple[str, dict[str, Any]]:
        if self.rng.random() < 0.4:
            return "echo", {"n": self.rng.randint(0, 10**6), "id": uuid.uuid4().hex[:8]}
        return "sleep", {"seconds": round(self.rng.uniform(0.05, 0.4), 3)}

    def item(self) -> dict[str, Any]:
        definition, data = self.task()
        return {"taskDefinitionId": definition, "input": data}
