"""Gauges read when /metrics is scraped, beside the ledger's: workers up, queues, build info."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from config.settings import Settings
from shared import heartbeats, queues
from shared.db import Database
from shared.errors import TaskexecError

#: Seconds a reading is reused, as for the ledger: several scrapers must not multiply it.
CACHE_SECONDS = 5.0


class WorkersUp:
    """Workers whose heartbeat is fresh in Redis (shared/heartbeats.py), by executor queue.

    Heartbeats rather than Celery's `inspect ping` (a broadcast that waits for every reply) or
    Celery's event heartbeats (a receiver to keep running): one script call on the broker the
    workers need anyway, and a worker cut off from it counts as down, which for taking work
    it is.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._cached: list[Metric] = []

    def describe(self) -> Iterator[Metric]:
        yield from self._families({}, up=False)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= CACHE_SECONDS:
                self._cached = self._read()
                self._read_at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[Metric]:
        import redis

        try:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
                )
            alive = heartbeats.alive(self._client)
        except redis.RedisError:
            return self._families(None, up=False)
        return self._families(alive, up=True)

    @staticmethod
    def _families(alive: dict[str, list[str]] | None, up: bool) -> list[Metric]:
        readable = GaugeMetricFamily(
            "taskexec_heartbeats_up", "1 when the workers' heartbeats could be read from Redis"
        )
        readable.add_metric([], 1 if up else 0)
        if alive is None:
            return [readable]
        workers = GaugeMetricFamily(
            "taskexec_workers_up", "Workers whose heartbeat is fresh (within 30 s)"
        )
        workers.add_metric([], len(alive))
        by_executor = GaugeMetricFamily(
            "taskexec_executor_workers",
            "Workers up that consume an executor's queue (absent for an executor with none)",
            labels=["executor"],
        )
        counts: dict[str, int] = {}
        for consumed in alive.values():
            for queue in consumed:
                counts[queue] = counts.get(queue, 0) + 1
        for executor, count in sorted(counts.items()):
            by_executor.add_metric([executor], count)
        return [readable, workers, by_executor]


#: Owners given a series of their own in taskexec_queue_owner_queued_tasks; the rest are summed
#: under "(other)", so an owner count in the thousands never becomes thousands of series.
TOP_OWNERS = 10


class QueueGauges:
    """GET /api/v1/queues as gauges (shared/queues.py), per executor, and the top owners.

    What an autoscaler scales on: `waiting + dispatched` is the backlog, `slots` what the
    fleet runs at once, `oldest_waiting_age_seconds` how late the backlog already is.
    """

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._client: Any = None
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._cached: list[Metric] = []

    def describe(self) -> Iterator[Metric]:
        yield from self._families([], [], up=False)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= CACHE_SECONDS:
                self._cached = self._read()
                self._read_at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[Metric]:
        if self._client is None:
            self._client = queues.redis_client(self.settings.redis_url)
        try:
            found = queues.snapshot(self.db, self._client)
            owners = queues.top_owners(self.db, TOP_OWNERS)
        except TaskexecError:
            return self._families([], [], up=False)
        return self._families(found, owners, up=True)

    @staticmethod
    def _families(
        found: list[queues.QueueSnapshot], owners: list[queues.OwnerQueued], up: bool
    ) -> list[Metric]:
        readable = GaugeMetricFamily(
            "taskexec_queues_up", "1 when the queue gauges could be read from the ledger"
        )
        readable.add_metric([], 1 if up else 0)
        if not up:
            return [readable]

        def family(name: str, what: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"taskexec_queue_{name}", what, labels=["executor"])

        waiting = family(
            "waiting_tasks",
            "PENDING or RETRYING tasks with no message in Redis yet (delayed, backoff, held "
            "back), by executor",
        )
        dispatched = family(
            "dispatched_tasks", "PENDING or RETRYING tasks whose message is in Redis, by executor"
        )
        running = family("running_tasks", "RUNNING tasks, by executor")
        workers = family(
            "workers", "Workers up consuming the executor (absent when Redis is unreadable)"
        )
        slots = family(
            "slots", "Tasks the executor's workers run at once (absent when Redis is unreadable)"
        )
        age = family(
            "oldest_waiting_age_seconds",
            "Seconds since the oldest due task not yet running became due (0 when none), by "
            "executor",
        )
        for q in found:
            waiting.add_metric([q.executor], q.waiting)
            dispatched.add_metric([q.executor], q.dispatched)
            running.add_metric([q.executor], q.running)
            if q.workers is not None and q.slots is not None:
                workers.add_metric([q.executor], q.workers)
                slots.add_metric([q.executor], q.slots)
            age.add_metric([q.executor], (q.oldest_waiting_age_ms or 0) / 1000)
        by_owner = GaugeMetricFamily(
            "taskexec_queue_owner_queued_tasks",
            f"Tasks not yet running (waiting + dispatched) of the {TOP_OWNERS} owners with the "
            'most; every other owner summed under owner="(other)"',
            labels=["owner"],
        )
        for o in owners:
            by_owner.add_metric([o.owner], o.queued)
        return [readable, waiting, dispatched, running, workers, slots, age, by_owner]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class BuildInfo:
    """`taskexec_build_info` = 1, its labels naming what runs: to spot a half-done deploy."""

    def __init__(self) -> None:
        self.labels = {
            "version": _version("taskexec"),
            "python": platform.python_version(),
            "celery": _version("celery"),
        }

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "taskexec_build_info",
            "Versions of the API's code, Python and Celery (always 1)",
            labels=list(self.labels),
        )
        info.add_metric(list(self.labels.values()), 1)
        yield info
