"""What the latency figures poll: task rows in Postgres, probe stamps in Redis, child pids."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import baseline_celery
from bench.stack import Stack

POLL = 0.005  # seconds between looks at a row, a stamp or a pid: the resolution of "visible"


@dataclass(frozen=True)
class Row:
    """The columns of a task the latencies need (times as epoch seconds)."""

    status: str
    start: float | None
    end: float | None
    pid: int | None


class Ledger:
    """Reads task rows from Postgres, polling until a status shows."""

    def __init__(self, stack: Stack) -> None:
        self.conn = stack.connect()

    def row(self, task_id: str) -> Row:
        """Read one task now."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT status, extract(epoch FROM start_time), extract(epoch FROM end_time),"
                " worker_pid FROM tasks WHERE id = %s",
                (task_id,),
            )
            status, start, end, pid = cur.fetchone()  # type: ignore[misc]
        return Row(status, float(start) if start else None, float(end) if end else None, pid)

    def wait(self, task_id: str, statuses: set[str], timeout: float = 30) -> tuple[Row, float]:
        """Poll until the task shows one of `statuses`; return (row, wall time first seen)."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.row(task_id)
            if row.status in statuses:
                return row, time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} stuck in {row.status}, wanted {statuses}")
            time.sleep(POLL)


class Stamps:
    """Reads the raw-Celery probes' stamps (start, end, pid) from Redis."""

    def __init__(self, stack: Stack) -> None:
        self.redis = stack.redis()

    def get(self, key: str) -> tuple[float, float, int] | None:
        """The stamp of probe `key` as (start, end or 0, pid), or None before it starts."""
        raw = self.redis.hget(baseline_celery.STAMPS, key)
        if raw is None:
            return None
        start, end, pid = raw.split()
        return float(start), float(end), int(pid)

    def wait(self, key: str, ended: bool = False, timeout: float = 30) -> tuple[float, float, int]:
        """Poll until probe `key` has started (or, with `ended`, ended); return its stamp."""
        deadline = time.monotonic() + timeout
        while True:
            stamp = self.get(key)
            if stamp is not None and (stamp[1] or not ended):
                return stamp
            if time.monotonic() > deadline:
                raise TimeoutError(f"probe {key} never {'ended' if ended else 'started'}")
            time.sleep(POLL)


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie not yet reaped by its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def until_free(
    sent: float, pid: int | None, probe_start: Callable[[], float | None], timeout: float = 30
) -> tuple[float, float]:
    """Poll until the probe has started; return (child gone - sent, probe start - sent)."""
    gone = float("nan")
    deadline = time.monotonic() + timeout
    while True:
        if pid is not None and gone != gone and process_gone(pid):
            gone = time.time() - sent
        start = probe_start()
        if start is not None:
            return gone, start - sent
        if time.monotonic() > deadline:
            raise TimeoutError("the probe task never started")
        time.sleep(POLL)
