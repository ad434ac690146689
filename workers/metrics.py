"""Worker metrics for Prometheus: deliveries, completions, retries, durations, queue waits.

The pool's child processes count (prometheus_client's multiprocess mode: one file per process
in a directory private to this worker) and the worker's main process serves the sum on
TASKEXEC_METRICS_PORT. Under `taskexec dev`, whose processes all count into one shared
directory (config/multiproc.py), the worker counts there and the API's /metrics serves it.
Everything is set up in the main process before the pool forks, so prometheus_client is
imported only after the directory is known. The sweeper counts its lease rescues the same way
(`counting_sweeper`), and `install` also starts the worker's heartbeat (workers/heartbeat.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any

from config import multiproc
from config.settings import Settings
from workers import heartbeat

if TYPE_CHECKING:
    from shared.store import ClaimedTask
    from workers.sweeper import Sweeper

log = logging.getLogger(__name__)

#: What `Runtime.execute` returns for an attempt that ended the task, and the status it set.
TERMINAL_OUTCOMES = {
    "completed": "COMPLETED",
    "failed": "FAILED",
    "timed_out": "TIMED_OUT",
    "cancelled": "CANCELLED",
}
#: Attempts last from milliseconds (echo) to an hour (the sleep default): wide buckets.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: From a few milliseconds (an idle pool) to an hour (a backlog).
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class WorkerMetrics:
    """The worker's counters and histogram, on `registry` (default: prometheus_client's)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = registry if registry is not None else REGISTRY
        self.deliveries = Counter(
            "taskexec_worker_deliveries_total",
            "Task messages handled, by definition and outcome (skipped: nothing to claim)",
            ["definition", "outcome"],
            registry=registry,
        )
        self.completions = Counter(
            "taskexec_task_completions_total",
            "Tasks that reached a terminal status on a worker, by definition and status",
            ["definition", "status"],
            registry=registry,
        )
        self.retries = Counter(
            "taskexec_task_retries_total",
            "Failed attempts that were scheduled for a retry, by definition",
            ["definition"],
            registry=registry,
        )
        self.durations = Histogram(
            "taskexec_attempt_duration_seconds",
            "Wall time of an attempt (claim to recorded outcome), by definition",
            ["definition"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.hard_timeouts = Counter(
            "taskexec_worker_hard_timeouts_total",
            "Attempts killed at their hard time limit, by definition",
            ["definition"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "taskexec_queue_wait_seconds",
            "Submission to the start of the first attempt (both on the database's clock),"
            " by definition",
            ["definition"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        # Counted by the sweeper's process: no worker is left to count these attempts.
        self.lease_rescues = Counter(
            "taskexec_lease_rescues_total",
            "Attempts the sweeper ended because their worker stopped renewing the lease",
            registry=registry,
        )

    def observe(self, definition: str, outcome: str, seconds: float | None) -> None:
        """Count one delivery and what it did; `seconds` is its duration when it ran."""
        self.deliveries.labels(definition, outcome).inc()
        status = TERMINAL_OUTCOMES.get(outcome)
        if status is not None:
            self.completions.labels(definition, status).inc()
        elif outcome == "retrying":
            self.retries.labels(definition).inc()
        if seconds is not None and outcome not in ("skipped", "error"):
            self.durations.labels(definition).observe(seconds)


def queue_wait(task: ClaimedTask) -> float | None:
    """Seconds a task waited for its first attempt (None for later attempts: retries wait
    on purpose, and a redelivery's wait is the lost worker's, not the queue's)."""
    if task.attempts != 1 or task.start_time is None:
        return None
    # A delayed task (runAt) waits for its time on purpose: the queue's share starts then.
    due = max(task.created_at, task.run_at) if task.run_at is not None else task.created_at
    return max((task.start_time - due).total_seconds(), 0.0)


def started(definition: str, task: ClaimedTask) -> None:
    """Observe the queue wait of an attempt just claimed (from the claim's row: no query)."""
    seconds = queue_wait(task)
    if seconds is not None and _RECORDER is not None and _RECORDER.metrics is not None:
        _RECORDER.metrics.queue_wait.labels(definition).observe(seconds)


def directory_for(settings: Settings) -> tuple[str, bool]:
    """The directory this process counts into, and whether it is private (made here).

    The one `taskexec dev` shares among all its processes, or else a private one.
    """
    if multiproc.is_shared(settings.metrics_dir):
        return settings.metrics_dir, False  # already in the environment
    return private_directory(), True


def private_directory() -> str:
    """Make this worker's own multiprocess directory and export it for prometheus_client.

    Never a shared one: a directory is summed whole, so an API or another worker writing to
    it would mix their counts in. prometheus_client reads the variable on first import.
    """
    directory = tempfile.mkdtemp(prefix="taskexec-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def serve(port: int, directory: str) -> None:
    """Serve the sum over every process's files on `port` (a thread of the calling process)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    start_http_server(port, registry=registry)


class _Recorder:
    """Connects Celery's signals to the metrics, which exist from `worker_init` on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics: WorkerMetrics | None = None
        self.directory = ""
        self.private = False
        self.started: dict[str, float] = {}

    def setup(self, **_: Any) -> None:
        """In the main process, before the pool forks: directory, then the metric objects."""
        self.directory, self.private = directory_for(self.settings)
        self.metrics = _metrics_in(self.directory)

    def start_server(self, **_: Any) -> None:
        """Once the pool runs: serve metrics (a busy port costs the metrics, not the worker)."""
        _serve_or_say(self.settings, self.directory, "worker")

    def cleanup(self, **_: Any) -> None:
        if self.private:
            shutil.rmtree(self.directory, ignore_errors=True)

    def task_started(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task_id is not None and getattr(task, "definition", None) is not None:
            self.started[task_id] = time.monotonic()

    def task_finished(
        self, task_id: str | None = None, task: Any = None, retval: Any = None, **_: Any
    ) -> None:
        definition = getattr(task, "definition", None)
        started = self.started.pop(task_id or "", None)
        if self.metrics is None or definition is None:
            return
        outcome = retval if isinstance(retval, str) else "error"
        seconds = time.monotonic() - started if started is not None else None
        self.metrics.observe(definition.id, outcome, seconds)

    def task_failed(self, sender: Any = None, exception: Any = None, **_: Any) -> None:
        from celery.exceptions import TimeLimitExceeded

        definition = getattr(sender, "definition", None)
        if self.metrics is not None and definition is not None:
            if isinstance(exception, TimeLimitExceeded):
                self.metrics.hard_timeouts.labels(definition.id).inc()


def _metrics_in(directory: str) -> WorkerMetrics:
    """The metric objects, counting into `directory` (already exported)."""
    import sys

    if "prometheus_client" in sys.modules:
        # Imported before the directory was known: re-read it, or children's counts
        # would stay in their own memory, invisible to the main process.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return WorkerMetrics()


def _serve_or_say(settings: Settings, directory: str, who: str) -> None:
    if not settings.metrics_port:
        log.info("%s metrics counted in %s, shared with the API", who, directory)
        return
    try:
        serve(settings.metrics_port, directory)
    except OSError as exc:
        log.error("%s metrics not served on port %s: %s", who, settings.metrics_port, exc)
        return
    log.info("%s metrics on port %d from %s", who, settings.metrics_port, directory)


def counting_sweeper(settings: Settings) -> tuple[Sweeper, str]:
    """A sweeper that counts its lease rescues when served or shared, and the private
    directory to remove when it stops ("" when none)."""
    from workers.sweeper import Sweeper

    class CountingSweeper(Sweeper):
        def rescue_expired_leases(self) -> int:
            rescued = super().rescue_expired_leases()
            if rescued:
                metrics.lease_rescues.inc(rescued)
            return rescued

    if not settings.metrics_port and not multiproc.is_shared(settings.metrics_dir):
        return Sweeper(settings), ""
    directory, private = directory_for(settings)
    metrics = _metrics_in(directory)
    _serve_or_say(settings, directory, "sweeper")
    return CountingSweeper(settings), directory if private else ""


def count(definition: str, outcome: str) -> None:
    """Count an outcome the worker's parent recorded for a child that died (no child counted it)."""
    if _RECORDER is not None and _RECORDER.metrics is not None:
        _RECORDER.metrics.observe(definition, outcome, None)


_RECORDER: _Recorder | None = None


def install(settings: Settings) -> bool:
    """Beat in Redis; count worker metrics when served (TASKEXEC_METRICS_PORT) or shared.

    Say whether metrics are counted.
    """
    from celery import signals

    heartbeat.install(settings)
    if not settings.metrics_port and not multiproc.is_shared(settings.metrics_dir):
        return False

    global _RECORDER
    recorder = _RECORDER = _Recorder(settings)
    # worker_init fires only in a worker's main process: Flower or `celery inspect`, which
    # import the same app, never touch the directory of a running worker. The uids keep a
    # second app in the same process from counting everything twice.
    for signal, receiver in (
        (signals.worker_init, recorder.setup),
        (signals.worker_ready, recorder.start_server),
        (signals.worker_shutdown, recorder.cleanup),
        (signals.task_prerun, recorder.task_started),
        (signals.task_postrun, recorder.task_finished),
        (signals.task_failure, recorder.task_failed),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"taskexec-metrics-{signal.name}")
    return True
