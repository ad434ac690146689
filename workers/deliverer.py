"""The deliverer: sends webhook deliveries, signed, retried with backoff, outside task workers."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2

from config.settings import Settings, parse_duration
from shared import db, store
from shared.db import Database
from shared.errors import ServiceUnavailable, TaskexecError
from shared.retention import Retention
from shared.task_document import task_from_snapshot, task_json
from shared.webhook_signing import event_body, headers, signing_secrets
from shared.webhook_targets import Reply, Sender, SendFailed, TargetRefused
from workers.release_wait import ReleaseWait

log = logging.getLogger(__name__)

#: First retry after about this many seconds; each later one waits twice as long...
BACKOFF_BASE_SECONDS = 1.0
#: ...up to this (then hourly until the retry horizon).
BACKOFF_MAX_SECONDS = 3600.0
#: Most due deliveries one claim looks at (the cap per subscription picks among them).
CLAIM_BATCH = 200
#: Without a NOTIFY, look for due deliveries at least this often (retries, a lost LISTEN).
IDLE_POLL_SECONDS = 2.0
#: Retention: events one statement deletes at most, and the pause between rounds.
PURGE_BATCH = 500
PURGE_INTERVAL_SECONDS = 60.0
#: Definitions' retention overrides are read again after this many seconds (expiresAt).
DEFINITIONS_TTL_SECONDS = 10.0
#: Characters of a failed answer's body kept in the delivery's error.
ERROR_BODY_CHARS = 200


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling, with equal jitter.

    Half the delay is fixed and half random, so retries of many deliveries that failed
    together (a receiver's outage) spread out instead of returning as one burst.
    """
    delay = min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_MAX_SECONDS)
    return delay / 2 + (rng or random).uniform(0, delay / 2)


class DeliveryWait(ReleaseWait):
    """The deliverer's sleep: woken by NOTIFY taskexec_webhooks, a finished send, or stop."""

    def listen(self) -> bool:
        if self._conn is not None and not self._conn.closed:
            return True
        if time.monotonic() < self._next_connect:
            return False
        self._next_connect = time.monotonic() + 5.0
        try:
            conn = db.connect(self.dsn, self.connect_timeout)
            conn.autocommit = True
            store.listen_for_deliveries(conn)
        except (ServiceUnavailable, psycopg2.Error) as exc:
            log.warning("cannot LISTEN for webhook events (polling instead): %s", exc)
            return False
        self._conn = conn
        return True


class Deliverer:
    """Claims due deliveries and sends them on a bounded pool of threads.

    At most `webhook_concurrency` attempts are in flight, and at most
    `webhook_subscription_concurrency` to one subscription, so a receiver that hangs holds
    only its own share of the pool. Claims are leases (FOR UPDATE SKIP LOCKED, then
    `locked_until`), so any number of deliverers may run: each attempt is made by one.
    """

    def __init__(self, settings: Settings, database: Database | None = None) -> None:
        self.settings = settings
        self.concurrency = settings.webhook_concurrency
        self.per_subscription = settings.webhook_subscription_concurrency
        self.db = database or Database(
            settings.database_url,
            max_connections=self.concurrency + 4,
            connect_timeout=settings.db_connect_timeout,
        )
        self.sender = Sender(
            settings.webhook_timeout, settings.webhook_allow_private, self.per_subscription
        )
        self.horizon = parse_duration(settings.webhook_retry_horizon)
        self.disable_after = parse_duration(settings.webhook_disable_after)
        self.retention_seconds = parse_duration(settings.webhook_retention)
        self.task_retention = Retention.from_settings(settings)
        # Long enough for the slowest attempt (connect + answer, each up to the timeout) to
        # finish before another deliverer may take the row over.
        self.lease_seconds = settings.webhook_timeout * 3 + 30
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="deliver")
        self._lock = threading.Lock()
        self._inflight: Counter[uuid.UUID] = Counter()
        self._total = 0
        self._definitions: dict[str, str | None] = {}
        self._definitions_at = 0.0
        self.waiter: DeliveryWait | None = None
        self.sent = 0  # attempts made (for logs and the bench)

    # ------------------------------------------------------------ claiming

    def claim_round(self) -> int:
        """Claim what is due and free to send, start sending it; return how many were claimed."""
        with self._lock:
            free = self.concurrency - self._total
            busy = [w for w, n in self._inflight.items() if n >= self.per_subscription]
            room = {w: self.per_subscription - n for w, n in self._inflight.items()}
        if free <= 0:
            return 0
        with self.db.connection() as conn:
            due = store.due_deliveries(conn, limit=min(CLAIM_BATCH, free * 4), busy=busy)
            chosen: list[uuid.UUID] = []
            for delivery_id, webhook_id in due:
                left = room.get(webhook_id, self.per_subscription)
                if left <= 0:
                    continue
                room[webhook_id] = left - 1
                chosen.append(delivery_id)
                if len(chosen) >= free:
                    break
            claimed = store.lease_deliveries(conn, chosen, self.lease_seconds)
        if not claimed:
            return 0
        bodies = self.render(claimed)
        with self._lock:
            for item in claimed:
                self._inflight[item.webhook_id] += 1
                self._total += 1
        for item in claimed:
            self.pool.submit(self._send, item, bodies[item.event_id])
        return len(claimed)

    def render(self, claimed: list[store.Claimed]) -> dict[uuid.UUID, bytes]:
        """Each claimed event's body, once per event (its subscriptions get the same bytes)."""
        snapshots = {c.event_id: c for c in claimed if c.task is not None}
        task_ids = [c.task_id for c in snapshots.values() if c.task_id is not None]
        attempts: dict[uuid.UUID, list[Any]] = {}
        retries: dict[uuid.UUID, list[uuid.UUID]] = {}
        if task_ids:
            with self.db.connection(autocommit=True) as conn:
                attempts = store.attempts_of_tasks(conn, task_ids)
                retries = store.retries_of_tasks(conn, task_ids)
                overrides = self._retentions(conn)
        bodies: dict[uuid.UUID, bytes] = {}
        for item in claimed:
            if item.event_id in bodies:
                continue
            if item.task is None:
                data: Any = item.data or {}
            else:
                task = task_from_snapshot(item.task)
                # The attempts the task had made at the change (a later retry's are not).
                made = [a for a in attempts.get(task.id, []) if a.attempt <= task.attempts]
                if task.task_definition_id in overrides:
                    expires = self.task_retention.expires_at(
                        task.status, task.end_time, task.pinned, overrides[task.task_definition_id]
                    )
                else:
                    expires = None  # as the API: a task whose definition is gone is kept
                data = task_json(task, made, retries.get(task.id, []), expires_at=expires)
            bodies[item.event_id] = event_body(item.type, item.event_created_at, data)
        return bodies

    def _retentions(self, conn: store.Conn) -> dict[str, str | None]:
        if time.monotonic() - self._definitions_at > DEFINITIONS_TTL_SECONDS:
            self._definitions = store.definition_retentions(conn)
            self._definitions_at = time.monotonic()
        return self._definitions

    # ------------------------------------------------------------ sending

    def _send(self, item: store.Claimed, body: bytes) -> None:
        try:
            self.attempt(item, body)
        except TaskexecError as exc:
            # The outcome could not be recorded: the lease lapses and the row is tried again.
            log.warning("delivery %s: outcome not recorded: %s", item.id, exc.message)
        except Exception:
            log.exception("delivery %s failed unexpectedly", item.id)
        finally:
            with self._lock:
                self._inflight[item.webhook_id] -= 1
                if self._inflight[item.webhook_id] <= 0:
                    del self._inflight[item.webhook_id]
                self._total -= 1
            if self.waiter is not None:
                self.waiter.wake()  # a slot is free: claim again

    def attempt(self, item: store.Claimed, body: bytes) -> store.Outcome:
        """Make one attempt of a claimed delivery and record how it ended."""
        if item.disabled:
            with self.db.connection() as conn:
                store.fail_undeliverable(
                    conn, item, f"subscription disabled: {item.disabled_reason or 'by its owner'}"
                )
            return store.Outcome(False, None, None, "subscription disabled")
        now = datetime.now(UTC)
        keys = signing_secrets(
            item.secret, item.previous_secret, item.previous_secret_expires_at, now
        )
        final = False
        try:
            reply = self.sender.post(item.url, body, headers(str(item.event_id), now, body, keys))
            outcome = _outcome(reply)
        except TargetRefused as exc:
            # A refused destination is a configuration to fix, not an outage to wait out.
            outcome, final = store.Outcome(False, None, None, str(exc)), True
        except SendFailed as exc:
            elapsed = int((datetime.now(UTC) - now).total_seconds() * 1000)
            outcome = store.Outcome(False, None, elapsed, str(exc))
        self.sent += 1
        with self.db.connection() as conn:
            if outcome.delivered:
                store.record_delivered(conn, item, outcome)
            else:
                retry_in = None if final else self.retry_in(item)
                store.record_failed_attempt(conn, item, outcome, retry_in, self.disable_after)
        return outcome

    def retry_in(self, item: store.Claimed) -> float | None:
        """Seconds until the next try, or None once the retry horizon is past."""
        delay = backoff(item.attempts)
        if self.horizon is None:
            return delay  # `off`: retried until it succeeds (or is redelivered, or purged)
        deadline = (item.retry_from or item.created_at) + timedelta(seconds=self.horizon)
        if datetime.now(UTC) + timedelta(seconds=delay) > deadline:
            return None
        return delay

    # ------------------------------------------------------------ retention

    def purge(self, stop: threading.Event) -> int:
        """Delete events (with their deliveries) past TASKEXEC_WEBHOOK_RETENTION, in batches."""
        if self.retention_seconds is None:
            return 0
        total = 0
        while not stop.is_set():
            started = time.monotonic()
            with self.db.connection() as conn:
                deleted = store.purge_old_events(conn, self.retention_seconds, PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                break
            # Hold the database at most half the time however large the backlog.
            stop.wait(time.monotonic() - started)
        if total:
            log.info("purged %d webhook event(s) past their retention", total)
        return total

    def _purge_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.purge(stop)
            except TaskexecError as exc:
                log.warning("webhook purge skipped: %s", exc.message)
            except Exception:
                log.exception("webhook purge failed")
            stop.wait(PURGE_INTERVAL_SECONDS)

    # ------------------------------------------------------------ the loop

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Deliver until `stop` is set; survive database outages; finish in-flight sends."""
        stop = stop or threading.Event()
        log.info(
            "deliverer running: %d in flight at most, %d per subscription",
            self.concurrency,
            self.per_subscription,
        )
        threading.Thread(
            target=self._purge_forever, args=(stop,), name="webhook-purge", daemon=True
        ).start()
        self.waiter = DeliveryWait(
            self.settings.database_url, stop, self.settings.db_connect_timeout
        )
        try:
            while not stop.is_set():
                wait = IDLE_POLL_SECONDS
                try:
                    self.waiter.listen()  # before the look-up: an event after it wakes us
                    claimed = self.claim_round()
                    if claimed:
                        wait = 0.0  # more may be due
                    else:
                        with self.db.connection(autocommit=True) as conn:
                            due_in = store.next_delivery_in(conn)
                        if due_in is not None and due_in > 0:
                            wait = min(due_in, IDLE_POLL_SECONDS)
                        # due_in == 0: due, but the pool or its subscriptions are full; a
                        # finished send wakes the loop.
                except TaskexecError as exc:
                    log.warning("delivery round skipped: %s", exc.message)
                except Exception:
                    log.exception("delivery round failed")
                if wait > 0 and not stop.is_set():
                    self.waiter.sleep(wait)
        finally:
            self.pool.shutdown(wait=True)
            self.waiter.close()
            self.sender.close()


def _outcome(reply: Reply) -> store.Outcome:
    if 200 <= reply.status < 300:
        return store.Outcome(True, reply.status, reply.elapsed_ms, None)
    text = reply.body[:ERROR_BODY_CHARS].decode("utf-8", "replace").strip()
    error = f"HTTP {reply.status}" + (f": {text}" if text else "")
    if 300 <= reply.status < 400:
        error = f"HTTP {reply.status}: redirects are not followed"
    return store.Outcome(False, reply.status, reply.elapsed_ms, error)
