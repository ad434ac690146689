"""The deliverer's Prometheus metrics: attempts by result, their duration, event-to-delivery lag.

Counted only when served (TASKEXEC_METRICS_PORT: the deliverer serves them itself) or when
`taskexec dev` shares one multiprocess directory with the API (its /metrics shows them);
otherwise `DelivererMetrics.get()` is a recorder that records nothing.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any

from config import multiproc
from config.settings import Settings

log = logging.getLogger(__name__)

#: From a local receiver (ms) to the timeout (10 s by default).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: From the status change to the receiver's 2xx: ms when healthy, hours through retries.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
#: What became of one claimed delivery.
RESULTS = ("delivered", "retrying", "failed", "refused")


class DelivererMetrics:
    """Counters and histograms of the attempts this process makes."""

    _installed: DelivererMetrics | None = None

    def __init__(self, registry: Any = None) -> None:
        self.enabled = registry is not None
        if not self.enabled:
            return
        from prometheus_client import Counter, Histogram

        self.attempts = Counter(
            "taskexec_webhook_attempts_total",
            "Webhook delivery attempts by result: delivered (2xx), retrying (failed, tried"
            " again later), failed (final), refused (not sent: subscription disabled)",
            ["result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "taskexec_webhook_attempt_seconds",
            "Seconds one attempt took (connect, send, the receiver's answer)",
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "taskexec_webhook_delivery_lag_seconds",
            "Seconds from the status change (the event) to its delivery's 2xx",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.unrecorded_outcomes = Counter(
            "taskexec_webhook_outcomes_unrecorded_total",
            "Attempts whose outcome could not be written (Postgres away, or a statement that"
            " fails): each is sent again when its lease lapses, without backoff",
            registry=registry,
        )
        for result in RESULTS:
            self.attempts.labels(result)  # every series exists from the start (rate() works)

    @classmethod
    def get(cls) -> DelivererMetrics:
        """The process's recorder: the installed one, else one that records nothing."""
        return cls._installed or cls()

    def count(self, result: str, seconds: float | None, lag: float | None = None) -> None:
        """Count one attempt (or a refusal, without `seconds`)."""
        if not self.enabled:
            return
        self.attempts.labels(result).inc()
        if seconds is not None:
            self.seconds.observe(seconds)
        if lag is not None:
            self.lag.observe(max(lag, 0.0))

    def unrecorded(self, count: int) -> None:
        """Count outcomes that could not be written."""
        if self.enabled:
            self.unrecorded_outcomes.inc(count)


def install(settings: Settings) -> str:
    """Count this deliverer's metrics when served or shared; return a private directory to
    remove when it stops ("" when none)."""
    from workers import metrics as worker_metrics

    if not settings.metrics_port and not multiproc.is_shared(settings.metrics_dir):
        return ""
    directory, private = worker_metrics.directory_for(settings)
    if "prometheus_client" in sys.modules:
        # Imported before the directory was known: make it count into the directory.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    from prometheus_client import REGISTRY

    DelivererMetrics._installed = DelivererMetrics(REGISTRY)
    if not settings.metrics_port:
        log.info("deliverer metrics counted in %s, shared with the API", directory)
    else:
        try:
            worker_metrics.serve(settings.metrics_port, directory)
            log.info("deliverer metrics on port %d", settings.metrics_port)
        except OSError as exc:
            log.error("deliverer metrics not served on port %s: %s", settings.metrics_port, exc)
    return directory if private else ""


def remove(directory: str) -> None:
    """Remove the private metrics directory `install` made."""
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
