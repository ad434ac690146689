"""Gauges read when /metrics is scraped, beside the ledger's: workers up (Redis), build info."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from config.settings import Settings
from shared import heartbeats

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
        for queues in alive.values():
            for queue in queues:
                counts[queue] = counts.get(queue, 0) + 1
        for executor, count in sorted(counts.items()):
            by_executor.add_metric([executor], count)
        return [readable, workers, by_executor]


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
