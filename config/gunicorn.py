"""gunicorn settings for the API; every value can be overridden by GUNICORN_* variables."""

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from config import multiproc
from config.gunicorn_worker import DEFAULT_BUFFER_BYTES, DEFAULT_READ_TIMEOUT, fd_limit

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
# One process per core, more threads each: concurrent submissions of a process share one
# INSERT, commit and publish (api/group_commit.py), so more of them per process means bigger
# batches and less Postgres and Redis work per request, and fewer processes fewer context
# switches. On 2 cores at 32 connections 2 x 8 served 1.3-1.5x the requests/s of 4 x 4 with
# 2.6-3.6 rows per commit instead of 1.5-2.0, and 2 x 16 1.1-1.3x more in three of four
# turns, with 4-5.4; but
# every thread may hold a database connection at once, and the pool (TASKEXEC_DB_POOL_MAX,
# 10) answers 503 past its size: more than 8 threads only with a pool of threads + 2
# (docs/benchmarks.md, "Round three").
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# gthread, but requests are read whole in the event loop before a thread gets them: idle and
# slow clients cannot take the threads (docs/security.md, "What the edge withstands").
worker_class = os.environ.get(
    "GUNICORN_WORKER_CLASS", "config.gunicorn_worker.BufferedThreadWorker"
)
# Connections one worker keeps open; it raises its own fd limit towards this (up to the hard one).
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", fd_limit()))
# Seconds a request's head and body may take to arrive (from its connection or the end of the
# previous request on it); later it is answered 408 and closed.
request_read_timeout = float(
    os.environ.get("GUNICORN_REQUEST_READ_TIMEOUT", str(DEFAULT_READ_TIMEOUT))
)
# Bodies up to this size are read whole before a thread gets them; larger ones are refused
# by the API (TASKEXEC_MAX_BODY_BYTES) from their Content-Length.
request_buffer_bytes = int(
    os.environ.get("GUNICORN_REQUEST_BUFFER_BYTES", str(DEFAULT_BUFFER_BYTES))
)
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
# Import the app in each worker, after the fork: database pools and broker connections are
# per process and must never be shared across a fork.
preload_app = False
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
# The same lines as gunicorn's logger, for half its CPU per request (config/access_log.py).
logger_class = "config.access_log.AccessLogger"
errorlog = "-"


def post_fork(server: Any, worker: Any) -> None:
    """Pass the worker the two values gunicorn has no settings for."""
    configure = getattr(worker, "configure", None)
    if configure is not None:
        configure(request_read_timeout, request_buffer_bytes)


#: The prefix of a metrics directory made by `on_starting` (and so removed by `on_exit`).
METRICS_DIR_PREFIX = "taskexec-api-metrics-"


def on_starting(server: Any) -> None:
    """Before any worker forks: a multiprocess metrics directory whenever several serve.

    Without one each scrape reads only the worker that answered it, and totals jump between
    processes (which Prometheus takes for counter resets). Exported here, the variable reaches
    every worker's environment, and prometheus_client is first imported only after it.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory:
        if not multiproc.is_shared(directory):  # `taskexec dev` emptied the one it shares
            multiproc.empty(directory)
    elif server.cfg.workers > 1:
        directory = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        server.log.info("metrics of the %d workers summed in %s", server.cfg.workers, directory)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (its counters stay: they are part of the totals)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory `on_starting` made (one given to gunicorn stays)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory and Path(directory).name.startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
