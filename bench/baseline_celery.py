"""The raw-Celery baselines: no-op tasks, one with the service's Postgres writes, and probes.

Run as `celery -A bench.baseline_celery worker -Q bench-baseline`. The app uses the service's
Celery settings (acks late, prefetch 1, priorities, events as configured) so that the
comparison measures what the service adds, not a different Celery configuration.

`defaults_app` is the other comparison: Celery as a user would run it without the service,
with Celery's own defaults (early acks, prefetch 4, no events, warnings only) and one Postgres
UPDATE per task, as `../shared/peers/` measures "Celery, defaults, with a PG update". Run as
`celery -A bench.baseline_celery:defaults_app worker -Q bench-defaults --loglevel WARNING`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg2
import psycopg2.extensions
import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from config.celery import celery_settings
from config.settings import Settings

QUEUE = "bench-baseline"
DEFAULTS_QUEUE = "bench-defaults"
STAMPS = "bench:stamps"  # hash: probe key -> "start end pid" (wall-clock times, 0 = not yet)

settings = Settings.from_env()
app = Celery("bench-baseline", set_as_current=False)
app.conf.update(celery_settings(settings))
app.conf.task_default_queue = QUEUE


class _PerProcess(threading.local):
    """Connections made after the fork, one per pool child (and thread)."""

    pid = 0
    pg: psycopg2.extensions.connection | None = None
    redis: redis.Redis | None = None


_local = _PerProcess()


def _fresh() -> _PerProcess:
    if _local.pid != os.getpid():
        _local.pid = os.getpid()
        _local.pg = None
        _local.redis = None
    return _local


def pg() -> psycopg2.extensions.connection:
    """This process's autocommit connection to the benchmark database."""
    local = _fresh()
    if local.pg is None or local.pg.closed:
        local.pg = psycopg2.connect(settings.database_url)
        local.pg.autocommit = True
    return local.pg


def stamps() -> redis.Redis:
    """This process's client for the latency stamps."""
    local = _fresh()
    if local.redis is None:
        local.redis = redis.Redis.from_url(settings.redis_url)
    return local.redis


@app.task(name="bench.noop", ignore_result=True)
def noop(task_id: str) -> None:
    """Do nothing: the floor of what Celery costs per task."""


@app.task(name="bench.pg_noop", ignore_result=True)
def pg_noop(task_id: str) -> None:
    """Do nothing, but record start and end in Postgres as the service does (two commits)."""
    with pg().cursor() as cur:
        cur.execute(
            "UPDATE bench_tasks SET status = 'RUNNING', started_at = now() WHERE id = %s",
            (task_id,),
        )
        cur.execute(
            "UPDATE bench_tasks SET status = 'COMPLETED', finished_at = now() WHERE id = %s",
            (task_id,),
        )


defaults_app = Celery("bench-defaults", set_as_current=False, broker=settings.redis_url)
defaults_app.conf.update(task_ignore_result=True, task_default_queue=DEFAULTS_QUEUE)


@defaults_app.task(name="bench.defaults_pg")
def defaults_pg(task_id: str) -> None:
    """One autocommit UPDATE per task, as the peers' "with a PG update" job does."""
    with pg().cursor() as cur:
        cur.execute(
            "UPDATE bench_tasks SET status = 'COMPLETED', finished_at = now() WHERE id = %s",
            (task_id,),
        )


@app.task(name="bench.stamp", ignore_result=True)
def stamp(key: str, seconds: float = 0.0) -> None:
    """Record when the task started (and ended, after sleeping `seconds`) for latency probes."""
    started = time.time()
    stamps().hset(STAMPS, key, f"{started} 0 {os.getpid()}")
    try:
        if seconds:
            time.sleep(seconds)
    except SoftTimeLimitExceeded:
        pass  # the soft-limit probe: ending here is what it measures
    stamps().hset(STAMPS, key, f"{started} {time.time()} {os.getpid()}")


def publish(name: str, *args: Any) -> str:
    """Send one baseline task by name; return its id."""
    return str(app.send_task(name, args=list(args), queue=QUEUE).id)
