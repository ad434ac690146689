"""Prometheus metrics of the API at /metrics: requests, submissions, cancels, refusals, the ledger.

Submissions are counted where tasks are created (api/submission.py) and cancels where they
happen (api/operations.py), so views stay free of metrics code; latency and 429s are counted by
an after-request hook. The ledger gauges (active tasks by status, queue depth per executor,
running and waiting per definition) are read from Postgres when scraped, and workers up and
build info by api/gauges.py. Under gunicorn with several workers, PROMETHEUS_MULTIPROC_DIR is
set (config/gunicorn.py): every worker process writes its counts there and a scrape, served by
any one of them, adds them all up.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from api.auth import public
from api.gauges import BuildInfo, QueueGauges, WorkersUp
from api.services import Services, services
from shared import store
from shared.errors import AuthenticationError, TaskexecError
from shared.status import ACTIVE, CLAIMABLE, Status

#: Seconds a ledger reading is reused: several Prometheus servers must not multiply the queries.
LEDGER_CACHE_SECONDS = 5.0
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: Where init_app keeps the collectors read at scrape time (the ledger's, workers up, build).
_SCRAPED = "taskexec_scraped"

REQUEST_SECONDS = Histogram(
    "taskexec_http_request_duration_seconds",
    "HTTP request latency, by method, route and status",
    ["method", "endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SUBMITTED = Counter(
    "taskexec_tasks_submitted_total",
    "Tasks created through the API (either surface), by definition",
    ["definition"],
)
# Every metric has labels, so none writes a value at import: in multiprocess mode that would
# need the directory before `init_app` has made it.
CANCELLED = Counter(
    "taskexec_tasks_cancelled_total",
    "Tasks cancelled through the API, by surface (tasks or task_apis)",
    ["surface"],
)
RATE_LIMITED = Counter(
    "taskexec_rate_limited_total", "Requests refused with 429, by route", ["endpoint"]
)

blp = Blueprint("metrics", __name__)


# ------------------------------------------------------------------ counting


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


# The histogram's child per (method, route, status): `labels()` takes a lock and builds its key
# on every call. Bounded by the routes, methods and statuses there are.
_SECONDS_BY_LABELS: dict[tuple[str, str, int], Any] = {}


def _observe(response: Response) -> Response:
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    rule = req.url_rule
    endpoint = rule.rule if rule is not None else "<unmatched>"
    method = req.method if req.method in _METHODS else "OTHER"
    status = response.status_code
    started = g.pop("metrics_started", None)
    if started is not None:
        labels = (method, endpoint, status)
        child = _SECONDS_BY_LABELS.get(labels)
        if child is None:
            child = REQUEST_SECONDS.labels(method, endpoint, str(status))
            _SECONDS_BY_LABELS[labels] = child
        child.observe(time.perf_counter() - started)
    if status == 429:
        RATE_LIMITED.labels(endpoint).inc()
    return response


# ------------------------------------------------------------------ the ledger


class LedgerCollector:
    """Gauges read from Postgres at scrape time, at most once per LEDGER_CACHE_SECONDS."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._cached: list[Metric] = []

    def describe(self) -> Iterator[Metric]:
        """Every family the ledger yields, without reading it."""
        yield from self._families([], {})

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= LEDGER_CACHE_SECONDS:
                self._cached = self._read()
                self._read_at = time.monotonic()
            yield from self._cached

    def _read(self) -> list[Metric]:
        try:
            with self.svc.db.connection() as conn:
                groups = store.active_groups(conn)
                definitions = store.worker_definitions(conn)
        except TaskexecError:
            up = GaugeMetricFamily("taskexec_ledger_up", "1 when the ledger gauges could be read")
            up.add_metric([], 0)
            return [up]
        return self._families(groups, definitions)

    @staticmethod
    def _families(groups: list[store.ActiveGroup], definitions: dict[str, str]) -> list[Metric]:
        up = GaugeMetricFamily("taskexec_ledger_up", "1 when the ledger gauges could be read")
        up.add_metric([], 1)
        executors = set(definitions.values())
        running = dict.fromkeys(definitions, 0)
        waiting_by_definition = dict.fromkeys(definitions, 0)
        by_status = dict.fromkeys(sorted(s.value for s in ACTIVE), 0)
        depth = dict.fromkeys(executors, 0)
        oldest: dict[str, float] = {}
        waiting = {s.value for s in CLAIMABLE}
        for group in groups:
            by_status[group.status] = by_status.get(group.status, 0) + group.count
            if group.manual:
                continue  # waits for a person, not for a worker
            if group.status in waiting:
                depth[group.executor] = depth.get(group.executor, 0) + group.count
                waiting_by_definition[group.definition] = (
                    waiting_by_definition.get(group.definition, 0) + group.count
                )
            elif group.status == Status.RUNNING:
                running[group.definition] = running.get(group.definition, 0) + group.count
            if group.oldest_pending_seconds is not None:
                oldest[group.executor] = max(
                    oldest.get(group.executor, 0.0), group.oldest_pending_seconds
                )
        tasks = GaugeMetricFamily("taskexec_tasks", "Active tasks, by status", labels=["status"])
        for status, count in by_status.items():
            tasks.add_metric([status], count)
        queue = GaugeMetricFamily(
            "taskexec_queue_depth",
            "Tasks waiting for a worker (PENDING or RETRYING), by executor",
            labels=["executor"],
        )
        for executor, count in sorted(depth.items()):
            queue.add_metric([executor], count)
        age = GaugeMetricFamily(
            "taskexec_queue_oldest_pending_seconds",
            "Age of the oldest PENDING task, by executor (absent when none waits)",
            labels=["executor"],
        )
        for executor, seconds in sorted(oldest.items()):
            age.add_metric([executor], seconds)
        return [
            up,
            tasks,
            queue,
            age,
            _by_definition("taskexec_running_tasks", "Attempts running now", running),
            _by_definition(
                "taskexec_waiting_tasks",
                "Tasks waiting for a worker (PENDING or RETRYING)",
                waiting_by_definition,
            ),
        ]


def _by_definition(name: str, what: str, counts: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(
        name, f"{what}, by definition (0 for an idle one)", labels=["definition"]
    )
    for definition, count in sorted(counts.items()):
        family.add_metric([definition], count)
    return family


# ------------------------------------------------------------------ the endpoint


def _check_token(token: str) -> None:
    if not token:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Bytes: compare_digest refuses non-ASCII text, and a header may carry any latin-1.
    given_bytes, token_bytes = given.strip().encode(), token.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, token_bytes):
        raise AuthenticationError("/metrics needs 'Authorization: Bearer <TASKEXEC_METRICS_TOKEN>'")


@blp.route("/metrics", methods=["GET"])
@public
def scrape() -> Response:
    """Prometheus text format; `Authorization: Bearer <TASKEXEC_METRICS_TOKEN>` when one is set.

    Public to the API's own authentication (scrapers carry no API key) and to rate limits;
    the optional token is checked here instead. Errors: 401 without the configured token.
    """
    svc = services()
    _check_token(svc.settings.metrics_token)
    if svc.settings.metrics_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=svc.settings.metrics_dir)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    scraped = CollectorRegistry(auto_describe=False)
    for collector in current_app.extensions[_SCRAPED]:
        scraped.register(collector)
    body += generate_latest(scraped)
    return Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Time every request (first hook in, last out), count outcomes, and serve /metrics."""
    svc: Services = app.extensions["taskexec"]
    if svc.settings.metrics_dir:
        Path(svc.settings.metrics_dir).mkdir(parents=True, exist_ok=True)
    svc.ledger = LedgerCollector(svc)
    app.extensions[_SCRAPED] = [
        svc.ledger,
        WorkersUp(svc.settings),
        QueueGauges(svc.settings, svc.db),
        BuildInfo(),
    ]
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    # after_request hooks run last-registered first: this one, registered first, sees the
    # final status, after error handlers and the limiter's headers.
    app.after_request_funcs.setdefault(None, []).insert(0, _observe)
    app.register_blueprint(blp)
