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

import psycopg2

from config.settings import Settings, parse_duration
from shared import db, store
from shared.db import Database
from shared.errors import ServiceUnavailable, TaskexecError
from shared.retention import Retention
from shared.webhook_sender import Sender
from shared.webhook_signing import headers, signing_secrets
from shared.webhook_targets import SendFailed, TargetRefused
from workers import deliverer_metrics as metrics
from workers.delivery_bodies import EventBodies
from workers.delivery_hold import HOLD_FACTOR, HeldDeliveries
from workers.delivery_lanes import LANE_WAIT_SECONDS, AttemptTimes
from workers.delivery_outcomes import OutcomeRecorder, Result, outcome_of, result_label
from workers.release_wait import ReleaseWait

log = logging.getLogger(__name__)

#: First retry after about this many seconds; each later one waits twice as long...
BACKOFF_BASE_SECONDS = 1.0
#: ...up to this (then hourly until the retry horizon).
BACKOFF_MAX_SECONDS = 3600.0
#: Due deliveries one claim looks at, at least (4 x the free room when more): the cap per
#: subscription picks among them, and only the picked ones are locked (a lock is a write).
CLAIM_SCAN_MIN = 128
#: Without a NOTIFY, look for due deliveries at least this often (retries, a lost LISTEN).
IDLE_POLL_SECONDS = 2.0
#: Queued events one fan-out statement takes at most (their deliveries: this x the
#: subscriptions that want each). A full batch is followed by the next one at once.
FANOUT_BATCH = 500
#: While due rows wait for room (the pool or a subscription's cap), look again this often
#: even if no finishing send wakes the loop.
STARVED_POLL_SECONDS = 0.1
#: After a round that took every due row, the next look (unless a NOTIFY comes first).
RECHECK_SECONDS = 0.2
#: Retention: events one statement deletes at most, and the pause between rounds.
PURGE_BATCH = 500
PURGE_INTERVAL_SECONDS = 60.0


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
        # Every write of the deliverer may be lost by a Postgres crash without harm: a lease
        # or an outcome forgotten means the delivery is sent again (at least once allows
        # it), a purge or a disabling is simply done again. So no commit waits for the WAL
        # flush; the events themselves commit with the status change, durably.
        self.db = database or Database(
            settings.database_url,
            max_connections=self.concurrency + 4,
            connect_timeout=settings.db_connect_timeout,
            synchronous_commit=False,
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
        self._inflight: Counter[uuid.UUID] = Counter()  # lanes (sends in flight) per subscription
        self._total = 0
        # How many lanes each subscription wants (workers/delivery_lanes.py).
        self.attempt_times = AttemptTimes(self.per_subscription)
        # Leased deliveries waiting for their subscription's room (see HOLD_FACTOR), with
        # their bodies; started by the send that frees the room, in the order leased.
        # Changed under `_lock`, with the sends in flight it depends on.
        self.held = HeldDeliveries(self.db, settings.webhook_timeout * 2)
        self._stopping = False
        self.bodies = EventBodies(self.db, self.task_retention)
        self.waiter: DeliveryWait | None = None
        self.sent = 0  # attempts made (for logs and the bench)
        self.fanned_out = 0  # events taken off the queue (for logs and tests)
        self.leased_at_fan_out = 0  # deliveries the fan-out leased and sent unclaimed (tests)
        self.lanes_opened = 0  # lanes started, each sending one or more deliveries (tests)
        # Seconds between looks at the event queue (TASKEXEC_WEBHOOK_POLL): new events wait
        # this long at most before their deliveries are made and claimed.
        self.poll_seconds = settings.webhook_poll
        # A claim is wanted before its time: a finished send freed room for due rows left
        # behind, or a NOTIFY (a redelivery, a test event) came.
        self._claim_now = False
        # The last claim left due rows behind (the pool or a subscription's cap was full):
        # a finished send wakes the loop to claim more.
        self._starved = False
        # The same, kept until the next claim (a wake clears `_starved`): the fan-out then
        # leases nothing, so new deliveries do not overtake the due ones left behind.
        self._behind = False
        self.metrics = metrics.DelivererMetrics.get()
        self.recorder = OutcomeRecorder(self.db, self.disable_after, self.metrics)

    # ------------------------------------------------------------ fanning out

    def fan_out(self) -> store.FanOut:
        """Fan one batch of queued events out to their deliveries (one statement, one commit).

        The status change's transaction wrote only the event, in the queue; its deliveries
        are written here, off the task's path, many events in one statement. Those the free
        room takes are written leased to this deliverer and sent at once (no claim of their
        own); the rest are written due, for `claim_round`. While the last claim left due rows
        behind, none is leased: the older ones go first, in due order, through the claim.
        Beyond the room to send now, up to HOLD_FACTOR x the cap more are leased and held.
        """
        per = self.per_subscription * (1 + HOLD_FACTOR)
        with self._lock:
            # Leases in flight or held: at most the pool's size.
            free = self.concurrency - self._total - self.held.total
            busy = set(self._inflight) | set(self.held.subscriptions())
            room = {w: per - self._inflight[w] - self.held.count(w) for w in busy}
        if self._behind:
            free = 0
        with self.db.connection(autocommit=True) as conn:
            done, leased = store.fan_out_and_lease(
                conn,
                FANOUT_BATCH,
                free=free,
                per_subscription=per,
                room=room,
                lease_seconds=self.lease_seconds,
            )
        self.fanned_out += done.events
        self.leased_at_fan_out += len(leased)
        if leased:
            self._start(leased)
        if done.deliveries > len(leased):
            self._claim_now = True  # the rest are due now
        return done

    # ------------------------------------------------------------ claiming

    def claim_round(self) -> int:
        """Claim what is due and free to send, start sending it; return how many were claimed."""
        with self._lock:
            free = self.concurrency - self._total
            # A subscription with deliveries held has no room for more (they go first).
            room = {w: self.per_subscription - n for w, n in self._inflight.items()}
            room.update(dict.fromkeys(self.held.subscriptions(), 0))
        if free <= 0:
            self._starved = True
            return 0
        with self.db.connection(autocommit=True) as conn:  # one statement
            claimed = store.claim_deliveries(
                conn,
                free=free,
                per_subscription=self.per_subscription,
                room=room,
                scan=max(CLAIM_SCAN_MIN, free * 4),
                lease_seconds=self.lease_seconds,
            )
        self._starved = self._behind = bool(claimed) and (
            len(claimed) >= free or claimed[0].due_count > len(claimed)
        )
        if not claimed:
            return 0
        self._start(claimed)
        return len(claimed)

    def _start(self, claimed: list[store.Claimed]) -> None:
        """Hold leased deliveries behind their subscriptions' others; open the lanes wanted."""
        bodies = self.render(claimed)
        starts: list[tuple[store.Claimed, bytes]] = []
        stale: list[store.Claimed] = []
        with self._lock:
            for item in claimed:
                self.held.add(item, bodies[item.event_id])
            for w in dict.fromkeys(item.webhook_id for item in claimed):
                self._open_lanes(w, self._lanes_wanted(w), starts, stale)
        self._launch(starts, stale)

    def widen(self) -> int:
        """Open the lanes each subscription with held deliveries wants now; return how many.

        Run by the loop every round. Lanes follow the attempt times as they are learned; and
        a subscription whose lanes finished nothing for LANE_WAIT_SECONDS while deliveries
        waited as long (a receiver slower than its attempt times say, or hanging) gets one
        more lane a round, up to its cap.
        """
        starts: list[tuple[store.Claimed, bytes]] = []
        stale: list[store.Claimed] = []
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return 0
            for w in list(self.held.subscriptions()):
                wanted = self._lanes_wanted(w)
                if self.attempt_times.idle(w, now) and self.held.waited(w, LANE_WAIT_SECONDS):
                    wanted = max(wanted, self._inflight[w] + 1)
                self._open_lanes(w, wanted, starts, stale)
        self._launch(starts, stale)
        return len(starts)

    def _lanes_wanted(self, w: uuid.UUID) -> int:
        """Lanes for subscription w, for what it has in flight and held (under `_lock`)."""
        return self.attempt_times.lanes(w, self._inflight[w] + self.held.count(w))

    def _open_lanes(
        self,
        w: uuid.UUID,
        wanted: int,
        starts: list[tuple[store.Claimed, bytes]],
        stale: list[store.Claimed],
    ) -> None:
        """Start held deliveries of w until it has `wanted` lanes (never past its cap)."""
        while self._inflight[w] < min(wanted, self.per_subscription):
            following = self.held.next(w, stale)
            if following is None:
                return
            self._inflight[w] += 1
            self._total += 1
            self.lanes_opened += 1
            starts.append(following)

    def _launch(
        self, starts: list[tuple[store.Claimed, bytes]], stale: list[store.Claimed]
    ) -> None:
        self.held.give_back(stale)
        for item, body in starts:
            self.pool.submit(self._send, item, body)

    def release_held(self) -> int:
        """Give every held delivery back, due now (a stopping deliverer); return how many held."""
        with self._lock:
            items = self.held.take_all()
        self.held.give_back(items)
        return len(items)

    def render(self, claimed: list[store.Claimed]) -> dict[uuid.UUID, bytes]:
        """Each claimed event's body, once per event (its subscriptions get the same bytes)."""
        return self.bodies.render(claimed)

    # ------------------------------------------------------------ sending

    def _send(self, item: store.Claimed, body: bytes) -> None:
        """Attempt a delivery, then its subscription's held ones, one after another."""
        try:
            while True:
                self._attempt_logged(item, body)
                stale: list[store.Claimed] = []
                with self._lock:
                    # The slot passes to the subscription's next held delivery, if any (none
                    # once stopping: what is held is given back).
                    following = None if self._stopping else self.held.next(item.webhook_id, stale)
                self.held.give_back(stale)
                if following is None:
                    break
                item, body = following
        finally:
            self._finished(item)

    def _attempt_logged(self, item: store.Claimed, body: bytes) -> None:
        try:
            self.attempt(item, body)
        except TaskexecError as exc:
            # The outcome could not be recorded: the lease lapses and the row is tried again.
            log.warning("delivery %s: outcome not recorded: %s", item.id, exc.message)
            self.metrics.unrecorded(1)
        except Exception:
            log.exception("delivery %s failed unexpectedly", item.id)
            self.metrics.unrecorded(1)

    def _finished(self, item: store.Claimed) -> None:
        """A send slot is free: count it, and wake the loop when due rows wait for room."""
        with self._lock:
            self._inflight[item.webhook_id] -= 1
            left = self._inflight[item.webhook_id]
            if left <= 0:
                del self._inflight[item.webhook_id]
            self._total -= 1
            # Claim again once a batch's worth is free, not after every send: a claim
            # per finished send would be a statement and a commit per delivery.
            wake = self._starved and (
                self._total <= self.concurrency // 2 or left <= self.per_subscription // 2
            )
            if wake:
                self._starved = False  # one wake per claim round is enough
                self._claim_now = True
        if wake and self.waiter is not None:
            self.waiter.wake()

    def refusal(self, item: store.Claimed) -> tuple[str, bool] | None:
        """Why a claimed delivery may not be sent, and whether to disable its subscription."""
        if item.disabled:
            return f"subscription disabled: {item.disabled_reason or 'by its owner'}", False
        if item.owner_keyed and not item.owner_active:
            return f"every API key of its owner {item.owner!r} is revoked", True
        if item.owner_keyed and item.admin and not item.owner_admin:
            return (
                f"scope all, but no active API key of its owner {item.owner!r} holds"
                " tasks:admin any more (a PATCH by the owner re-enables it with scope own)",
                True,
            )
        return None

    def attempt(self, item: store.Claimed, body: bytes) -> store.Outcome:
        """Make one attempt of a claimed delivery; its outcome is recorded in the next batch."""
        refused = self.refusal(item)
        if refused is not None:
            reason, disable = refused
            with self.db.connection() as conn:
                if disable:
                    store.refuse_delivery(conn, item, reason)
                    log.warning("webhook %s disabled: %s", item.webhook_id, reason)
                else:
                    store.fail_undeliverable(conn, item, reason)
            self.metrics.count("refused", None)
            return store.Outcome(False, None, None, reason)
        now = datetime.now(UTC)
        keys = signing_secrets(
            item.secret, item.previous_secret, item.previous_secret_expires_at, now
        )
        final = False
        started = time.monotonic()
        try:
            reply = self.sender.post(item.url, body, headers(str(item.event_id), now, body, keys))
            outcome = outcome_of(reply)
        except TargetRefused as exc:
            # A refused destination is a configuration to fix, not an outage to wait out.
            outcome, final = store.Outcome(False, None, None, str(exc)), True
        except SendFailed as exc:
            elapsed = int((time.monotonic() - started) * 1000)
            outcome = store.Outcome(False, None, elapsed, str(exc))
        seconds = time.monotonic() - started
        self.attempt_times.note(item.webhook_id, seconds)
        if not outcome.delivered:
            log.info("delivery %s (webhook %s) failed: %s", item.id, item.webhook_id, outcome.error)
        self.sent += 1
        retry_in = None if outcome.delivered or final else self.retry_in(item)
        ended = datetime.now(UTC)
        lag = (ended - item.event_created_at).total_seconds() if outcome.delivered else None
        self.metrics.count(result_label(outcome, final, retry_in), seconds, lag)
        self.recorder.add(Result(item, outcome, retry_in, ended))
        return outcome

    # ------------------------------------------------------------ recording outcomes

    def record(self, batch: list[Result]) -> None:
        """Write a batch of outcomes in one transaction (see OutcomeRecorder.record)."""
        self.recorder.record(batch)

    def flush(self) -> int:
        """Write the outcomes queued so far; return how many (tests call it directly too)."""
        return self.recorder.flush()

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

    def claim_and_plan(self) -> float:
        """Claim what is due; return the seconds until the next claim round is wanted."""
        claimed = self.claim_round()
        if self._starved:
            # Due rows left behind: a finishing send wakes us to claim them.
            return STARVED_POLL_SECONDS
        if claimed:
            # Took all that was due: look again soon (new deliveries wake us first).
            return RECHECK_SECONDS
        with self.db.connection(autocommit=True) as conn:
            due_in = store.next_delivery_in(conn)
        if due_in is not None and due_in > 0:
            return min(due_in, IDLE_POLL_SECONDS)
        if due_in == 0:
            # Due but not ours to take: subscriptions at their cap here, or another
            # deliverer claiming them right now.
            self._starved = True
            return STARVED_POLL_SECONDS
        return IDLE_POLL_SECONDS

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
        self.recorder.start()
        next_claim = 0.0  # monotonic time of the next claim round (0: at once)
        # The next look at the event queue: every poll (at once after a full batch), never
        # sooner for a wake-up. A lane that ends wakes the loop to claim what its subscription
        # left due; fanning out then too made the batches small (measured in a webhook turn
        # of the bench, 10,000 deliveries: 1,417 fan-outs, 113 us of Postgres execution per
        # delivery in them, and 863 claims; on the poll's clock 827, 97 us and 358).
        next_fan_out = 0.0
        try:
            while not stop.is_set():
                try:
                    self.waiter.listen()  # before the look-up: an event after it wakes us
                    if time.monotonic() >= next_fan_out:
                        done = self.fan_out()
                        more = done.events >= FANOUT_BATCH
                        next_fan_out = time.monotonic() + (0.0 if more else self.poll_seconds)
                    if self._claim_now or time.monotonic() >= next_claim:
                        self._claim_now = False
                        next_claim = time.monotonic() + self.claim_and_plan()
                    self.widen()
                    # The queue is looked at every poll, the deliveries when due (or woken).
                    wait = min(next_fan_out, next_claim) - time.monotonic()
                except TaskexecError as exc:
                    log.warning("delivery round skipped: %s", exc.message)
                    # Postgres away: try again (claims too) in a while, not 20 times a second.
                    wait, next_claim, next_fan_out = IDLE_POLL_SECONDS, 0.0, 0.0
                except Exception:
                    log.exception("delivery round failed")
                    wait, next_claim, next_fan_out = IDLE_POLL_SECONDS, 0.0, 0.0
                if wait > 0 and not stop.is_set() and self.waiter.sleep(wait):
                    self._claim_now = True  # a NOTIFY: a redelivery or a test event
        finally:
            with self._lock:
                self._stopping = True  # the sends in flight start no held delivery
            self.pool.shutdown(wait=True)
            self.release_held()
            self.recorder.stop(30)
            self.waiter.close()
            self.sender.close()
