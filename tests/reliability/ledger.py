"""Jepsen-style accounting: what the test did to every task, checked against the final ledger."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extras

from tests.reliability import verdict as verdicts
from tests.reliability.cluster import connect
from tests.reliability.verdict import Verdict, judge_task, outcome

TERMINAL = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}
#: Clock slack when matching an attempt to a fault (same host, same clock; commit latency).
SLACK = 0.3
#: How long after an outage ends an attempt still counts as touched by it (stale
#: connections are found and replaced on first use after a server comes back).
AFTERMATH = 6.0
#: A policy that retries an attempt lost to a fault; the worker-lost cap still applies.
RETRY_POLICY = {"maxRetries": 5, "retryInterval": 100, "backoffMultiplier": 1}


@dataclass
class Fault:
    """One injected fault: a process killed (pids) or a server out (no pids: everyone)."""

    kind: str
    started: float
    ended: float
    pids: frozenset[int] = frozenset()

    def touches(self, attempt: dict[str, Any]) -> bool:
        """Say whether an attempt was running when (or where) the fault struck."""
        begin = attempt["started_at"].timestamp()
        end = attempt["ended_at"].timestamp() if attempt["ended_at"] else float("inf")
        if self.pids:
            return (
                attempt["worker_pid"] in self.pids
                and begin <= self.ended + SLACK
                and end >= self.started - SLACK
            )
        return begin <= self.ended + AFTERMATH and end >= self.started - SLACK


@dataclass
class Tracked:
    """A task that got a 201, and everything the test did to it since."""

    id: str
    definition: str
    input: dict[str, Any]
    submitted: float
    cancels: list[int] = field(default_factory=list)  # response codes; -1: the call raised


class Ledger:
    """Tracks submissions, cancels and faults of one scenario and judges the final state."""

    def __init__(self, scenario: str, app: Any, headers: dict[str, str], settings: Any) -> None:
        self.scenario = scenario
        self.app = app
        self.headers = headers
        self.settings = settings
        self.tasks: dict[str, Tracked] = {}
        self.faults: list[Fault] = []
        self.responses: Counter[int] = Counter()
        self.problems: list[str] = []  # API misbehaviour seen while submitting or cancelling
        self.probes: list[float] = []  # seconds from a server's return to a probe's completion
        self.notes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._settled_at = 0.0

    def client(self) -> Any:
        """One Flask test client per thread (the nemesis submits probes too)."""
        if not hasattr(self._local, "client"):
            self._local.client = self.app.test_client()
        return self._local.client

    # ------------------------------------------------------------ what the test does

    def submit(self, definition: str, data: dict[str, Any], **extra: Any) -> str | None:
        """POST one task; track it on 201; note a 500 (or a crash) as a problem."""
        body = {"taskDefinitionId": definition, "input": data, **extra}
        body.setdefault("executionConfig", {"retryPolicy": RETRY_POLICY})
        try:
            response = self.client().post("/api/v1/tasks", json=body, headers=self.headers)
        except Exception as exc:  # noqa: BLE001 - the API must answer, whatever happens
            with self._lock:
                self.responses[-1] += 1
                self.problems.append(f"submit raised {type(exc).__name__}: {exc}")
            return None
        with self._lock:
            self.responses[response.status_code] += 1
            if response.status_code == 201:
                task_id = response.get_json()["id"]
                self.tasks[task_id] = Tracked(task_id, definition, data, time.time())
                return str(task_id)
            if response.status_code != 503:
                self.problems.append(
                    f"submit answered {response.status_code}: {response.get_data(as_text=True)}"
                )
            elif response.get_json()["error"]["code"] != "SERVICE_UNAVAILABLE":
                self.problems.append(f"503 without SERVICE_UNAVAILABLE: {response.get_json()}")
        return None

    def cancel(self, task_id: str, force: bool = False) -> int:
        """POST a cancel; record its response code against the task."""
        try:
            response = self.client().post(
                f"/api/v1/tasks/{task_id}/cancel",
                json={"reason": "reliability suite", "force": force},
                headers=self.headers,
            )
            code = response.status_code
        except Exception as exc:  # noqa: BLE001
            code = -1
            self.problems.append(f"cancel raised {type(exc).__name__}: {exc}")
        with self._lock:
            self.tasks[task_id].cancels.append(code)
            if code == 200 and response.get_json()["status"] != "CANCELLED":
                self.problems.append(f"cancel 200 without CANCELLED: {response.get_json()}")
            if code not in (200, 409, 503):
                self.problems.append(f"cancel of {task_id} answered {code}")
        return code

    def fault(self, kind: str, started: float, ended: float | None = None, pids: Any = ()) -> Fault:
        """Record a fault the nemesis injected (wall-clock times, as Postgres records them)."""
        fault = Fault(kind, started, ended if ended is not None else started, frozenset(pids))
        with self._lock:
            self.faults.append(fault)
        return fault

    def probe(self, since: float, timeout: float = 60) -> float | None:
        """Submit an echo and time how long after `since` it completes (service restored)."""
        deadline = time.monotonic() + timeout
        task_id = None
        while task_id is None and time.monotonic() < deadline:
            task_id = self.submit("echo", {"probe": True})
            if task_id is None:
                time.sleep(0.2)
        if task_id is None:
            return None
        with contextlib.closing(connect(self.settings.database_url)) as conn, conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT status FROM tasks WHERE id = %s", (task_id,))
                row = cur.fetchone()
                if row and row[0] in TERMINAL:
                    took = time.time() - since
                    with self._lock:
                        self.probes.append(took)
                    return took
                time.sleep(0.1)
        return None

    # ------------------------------------------------------------ the end of a run

    def settle(self, timeout: float = 90) -> float:
        """Wait until every tracked task is terminal (or `timeout`); return how long it took."""
        # A backlog drains at some tens of tasks a second here: never call a queued task lost.
        timeout = max(timeout, 0.1 * len(self.tasks))
        started = time.monotonic()
        ids = [uuid.UUID(t) for t in self.tasks]
        conn = connect(self.settings.database_url)
        try:
            while True:
                try:
                    with conn.cursor() as cur:
                        cur.execute(
                            "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND status = ANY(%s)",
                            (ids, list(TERMINAL)),
                        )
                        row = cur.fetchone()
                        done = row[0] if row else 0
                except psycopg2.OperationalError:
                    conn = connect(self.settings.database_url)
                    continue
                if done == len(ids) or time.monotonic() - started > timeout:
                    break
                time.sleep(0.2)
            # Quiet for a moment more: a late duplicate must have the chance to show itself.
            time.sleep(self.settings.sweep_interval * 3)
        finally:
            conn.close()
        self._settled_at = time.monotonic() - started
        return self._settled_at

    def verdict(self) -> Verdict:
        """Judge every tracked task against the final ledger."""
        rows, attempts = self._final_state()
        lost: list[str] = []
        unexpected = list(self.problems)
        counts: Counter[str] = Counter()
        duplicated = extra = 0
        recovery: dict[int, float] = {}
        for task_id, tracked in self.tasks.items():
            row = rows.get(task_id)
            if row is None or row["status"] not in TERMINAL:
                lost.append(f"{task_id} ({tracked.definition}) is {row and row['status']}")
                continue
            history = attempts.get(task_id, [])
            counts[outcome(row)] += 1
            if len(history) > 1:
                duplicated += 1
                extra += len(history) - 1
            problems = judge_task(tracked, row, history, self.faults, self.settings.max_worker_lost)
            unexpected += [f"{task_id}: {p}" for p in problems]
            for attempt in history:
                if attempt["ended_at"] is None or attempt["status"] == "COMPLETED":
                    continue
                for number, fault in enumerate(self.faults):
                    if fault.touches(attempt):
                        # Until the lost attempt was closed and its task handed back
                        # (retried or failed): what the service controls, without queueing.
                        took = attempt["ended_at"].timestamp() - fault.ended
                        recovery[number] = max(recovery.get(number, 0.0), took)
        refused = sum(n for code, n in self.responses.items() if code != 201)
        notes = dict(self.notes)
        return Verdict(
            scenario=self.scenario,
            tasks=len(self.tasks),
            faults=len(self.faults),
            lost=lost,
            unexpected=unexpected,
            duplicated_tasks=duplicated,
            extra_attempts=extra,
            refused=refused,
            recovery=sorted(recovery.values()),
            probes=sorted(self.probes),
            drain=self._settled_at,
            counts=dict(counts),
            notes=notes,
        )

    def last_end(self, task_ids: list[str]) -> float:
        """Return when the last of these tasks reached its terminal status (epoch seconds)."""
        with contextlib.closing(connect(self.settings.database_url)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT extract(epoch FROM max(end_time)) FROM tasks WHERE id = ANY(%s)",
                ([uuid.UUID(t) for t in task_ids],),
            )
            row = cur.fetchone()
        return float(row[0]) if row and row[0] is not None else float("nan")

    def _final_state(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        ids = [uuid.UUID(t) for t in self.tasks]
        with contextlib.closing(connect(self.settings.database_url)) as conn:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("SELECT * FROM tasks WHERE id = ANY(%s)", (ids,))
                rows = {str(r["id"]): dict(r) for r in cur.fetchall()}
                cur.execute(
                    "SELECT * FROM task_attempts WHERE task_id = ANY(%s) ORDER BY task_id, attempt",
                    (ids,),
                )
                attempts: dict[str, list[dict[str, Any]]] = {}
                for r in cur.fetchall():
                    attempts.setdefault(str(r["task_id"]), []).append(dict(r))
                cur.execute(
                    "SELECT count(*) AS n FROM tasks WHERE NOT (id = ANY(%s))"
                    " AND NOT (input ? 'probe')",
                    (ids,),
                )
                phantoms = cur.fetchone()["n"]
        if phantoms:
            # A task stored although its submission was not answered 201.
            self.notes["phantoms"] = phantoms
        return rows, attempts

    def report(self, verdict: Verdict) -> None:
        """Print the scenario's one-line summary and record its figures."""
        verdicts.report(verdict)
