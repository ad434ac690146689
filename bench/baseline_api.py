"""The baseline HTTP endpoint: minimal Flask that only INSERTs a row and calls apply_async.

Served by `gunicorn -c config/gunicorn.py bench.baseline_api:app` with four sync workers.
"""

from __future__ import annotations

import os
import queue
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
from flask import Flask, jsonify, request
from psycopg2.extras import Json

from bench.baseline_celery import pg_noop

app = Flask(__name__)
# Idle connections of this worker process, reused (module import happens after gunicorn's fork).
_idle: queue.LifoQueue[psycopg2.extensions.connection] = queue.LifoQueue()


@contextmanager
def connection() -> Iterator[psycopg2.extensions.connection]:
    """A pooled connection in a transaction: commit on success, roll back on error."""
    try:
        conn = _idle.get_nowait()
    except queue.Empty:
        conn = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with conn:
            yield conn
    except BaseException:
        conn.close()
        raise
    _idle.put(conn)


@app.get("/healthz")
def healthz() -> Any:
    """Readiness probe for the benchmark runner."""
    return jsonify({"status": "ok"})


@app.post("/tasks")
def submit() -> Any:
    """INSERT the task, then publish its id: no auth, no validation, no limits."""
    task_id = str(uuid.uuid4())
    body = request.get_json()
    with connection() as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO bench_tasks (id, status, input) VALUES (%s, 'PENDING', %s)",
            (task_id, Json(body.get("input", {}))),
        )
    pg_noop.apply_async(args=[task_id], task_id=task_id)
    return jsonify({"id": task_id, "status": "PENDING"}), 201
