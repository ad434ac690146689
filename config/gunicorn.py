"""gunicorn settings for the API; every value can be overridden by GUNICORN_* variables."""

import multiprocessing
import os
from typing import Any

from config.gunicorn_worker import DEFAULT_BUFFER_BYTES, DEFAULT_READ_TIMEOUT, fd_limit

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
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
errorlog = "-"


def post_fork(server: Any, worker: Any) -> None:
    """Pass the worker the two values gunicorn has no settings for."""
    configure = getattr(worker, "configure", None)
    if configure is not None:
        configure(request_read_timeout, request_buffer_bytes)
