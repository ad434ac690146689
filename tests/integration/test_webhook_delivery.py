"""Webhook deliveries against a real HTTP receiver: signatures, retries, outages, SSRF."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg2
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from cli.base import ledger
from config.settings import Settings
from shared import db, store
from shared.store._prepared import Prepared
from shared.webhook_signing import new_secret
from tests.helpers import submit, task_row, wait_for, wait_for_status
from workers.deliverer import Deliverer

pytestmark = pytest.mark.integration

ALL_EVENTS = [
    "task.started",
    "task.retrying",
    "task.completed",
    "task.failed",
    "task.timed_out",
    "task.cancelled",
]


# ---------------------------------------------------------------- a real receiver


class _Server(ThreadingHTTPServer):
    # A real server's accept queue: the default 5 drops connections (a SYN retransmitted a
    # second later) when two deliverers open 32 at once on a loaded machine.
    request_queue_size = 128
    daemon_threads = True


class Receiver:
    """A threaded HTTP server recording every request; behaviour per path.

    `plan[path]` is a list of status codes answered in turn (the last one repeats); a
    status of 0 hangs for `hang_seconds`; 302 redirects to /elsewhere.
    """

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: dict[str, list[int]] = {}
        self.hang_seconds = 30.0
        self.lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                with receiver.lock:
                    seen = [r for r in receiver.requests if r["path"] == self.path]
                    plan = receiver.plan.get(self.path, [200])
                    status = plan[min(len(seen), len(plan) - 1)]
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "at": time.monotonic(),
                        }
                    )
                if status == 0:
                    receiver._release.wait(receiver.hang_seconds)
                    status = 200
                self.send_response(status)
                if status == 302:
                    self.send_header("location", "/elsewhere")
                self.send_header("content-length", "2")
                self.end_headers()
                try:
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def release(self) -> None:
        """Let the hanging requests answer (200), and every later one at once."""
        self._release.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _empty_tables(clean_db: None) -> None:
    """Every test starts without subscriptions, events or tasks."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- subscriptions and events


def subscribe(
    database_url: str,
    url: str,
    events: list[str] | None = None,
    owner: str = "alice",
    **columns: Any,
) -> tuple[uuid.UUID, str]:
    """Store a subscription as the API does; return its id and secret."""
    webhook_id, secret = uuid.uuid4(), new_secret()
    values = {"events": events or ALL_EVENTS, **columns}
    names = ", ".join(values)
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO webhooks (id, owner, url, secret, {names})"
            f" VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(values))})",
            [webhook_id, owner, url, secret, *values.values()],
        )
    return webhook_id, secret


def finish_tasks(
    database_url: str,
    count: int,
    status: str = "COMPLETED",
    owner: str = "alice",
    *,
    fan_out: bool = False,
) -> list[uuid.UUID]:
    """Insert tasks and move them to `status` in one transaction: the trigger queues their
    events. With `fan_out`, make their deliveries at once (as a deliverer's first step)."""
    rows = [task_row(owner=owner) for _ in range(count)]
    with ledger(database_url) as conn:
        store.insert_tasks(conn, rows)
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET status = %s, end_time = now() WHERE id = ANY(%s)",
                (status, [r.id for r in rows]),
            )
    if fan_out:
        fan_out_all(database_url)
    return [r.id for r in rows]


def fan_out_all(database_url: str, batch: int = 500) -> int:
    """Fan every queued event out to its deliveries (a deliverer's step); return the events."""
    total = 0
    with ledger(database_url) as conn:
        conn.autocommit = True
        while done := store.fan_out_events(conn, batch).events:
            total += done
    return total


def deliveries(database_url: str, webhook_id: uuid.UUID) -> list[store.Delivery]:
    with ledger(database_url) as conn:
        return store.list_deliveries(conn, webhook_id, limit=1000)


def verify(secret: str, request: dict[str, Any]) -> dict[str, Any]:
    """Check a request as a receiver would, with the standardwebhooks package."""
    return dict(Verifier(secret).verify(request["body"], request["headers"]))


@pytest.fixture
def webhook_settings(settings: Settings) -> Settings:
    return settings.with_overrides(
        webhook_allow_private=True,
        webhook_timeout=2.0,
        webhook_concurrency=16,
        webhook_subscription_concurrency=2,
    )


@pytest.fixture
def deliverer(webhook_settings: Settings) -> Iterator[Callable[..., Deliverer]]:
    """Start in-process deliverers (a thread each, the real loop); stop them afterwards."""
    running: list[tuple[Deliverer, threading.Event, threading.Thread]] = []

    def start(**overrides: Any) -> Deliverer:
        worker = Deliverer(webhook_settings.with_overrides(**overrides))
        stop = threading.Event()
        thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
        thread.start()
        running.append((worker, stop, thread))
        return worker

    yield start
    for worker, stop, thread in running:
        stop.set()
        thread.join(15)
        worker.db.close()


# ---------------------------------------------------------------- from real worker runs


@pytest.mark.slow
def test_each_event_type_from_real_runs_arrives_signed_with_the_task_as_get_shows_it(
    client, auth, backends, processes, receiver, deliverer, webhook_settings
):
    headers = auth.key()
    _, secret = subscribe(backends.database_url, receiver.url("/all"))
    processes.settings = webhook_settings
    processes.worker(concurrency=2)
    processes.sweeper()
    deliverer()

    done = submit(client, headers, "echo", {"hello": "webhooks"})
    failed = submit(
        client,
        headers,
        "flaky",
        {"failTimes": 100},
        executionConfig={"retryPolicy": {"maxRetries": 1, "retryInterval": 100}},
    )
    timed_out = submit(
        client,
        headers,
        "sleep",
        {"seconds": 5, "ignoreSoftLimit": True},
        executionConfig={"timeout": 300, "retryPolicy": {"maxRetries": 0}},
    )
    cancelled = submit(client, headers, "sleep", {"seconds": 30})
    wait_for_status(client, headers, cancelled, {"RUNNING"})
    assert client.post(f"/api/v1/tasks/{cancelled}/cancel", headers=headers).status_code == 200
    for tid in (done, failed, timed_out, cancelled):
        wait_for_status(client, headers, tid, {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}, 60)

    wanted = {
        done: {"task.started", "task.completed"},
        failed: {"task.started", "task.retrying", "task.failed"},
        timed_out: {"task.started", "task.timed_out"},
        cancelled: {"task.started", "task.cancelled"},
    }

    def received() -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for request in receiver.at("/all"):
            doc = json.loads(request["body"])
            seen.setdefault(doc["data"]["id"], set()).add(doc["type"])
        return seen

    wait_for(lambda: all(wanted[t] <= received().get(t, set()) for t in wanted), 30)
    by_type: dict[tuple[str, str], dict[str, Any]] = {}
    for request in receiver.at("/all"):
        doc = verify(secret, request)  # raises unless the signature is right
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"]["webhook-id"]
        by_type[(doc["data"]["id"], doc["type"])] = doc
    final = by_type[(done, "task.completed")]
    # The data is the task exactly as GET returns it (the task has not changed since).
    assert final["data"] == client.get(f"/api/v1/tasks/{done}", headers=headers).get_json()
    assert final["data"]["output"] == {"hello": "webhooks"}
    started = by_type[(done, "task.started")]
    assert started["data"]["status"] == "RUNNING"  # the task as it was at that change
    assert by_type[(failed, "task.failed")]["data"]["error"] is not None
    assert by_type[(cancelled, "task.cancelled")]["data"]["status"] == "CANCELLED"
    timestamp = datetime.fromisoformat(final["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - timestamp).total_seconds()) < 120


def test_events_are_filtered_by_type_and_owner(backends, receiver, deliverer):
    subscribe(backends.database_url, receiver.url("/completed"), ["task.completed"])
    subscribe(backends.database_url, receiver.url("/failed"), ["task.failed"])
    subscribe(backends.database_url, receiver.url("/bob"), ALL_EVENTS, owner="bob")
    subscribe(backends.database_url, receiver.url("/admin"), ALL_EVENTS, owner="root", admin=True)
    deliverer()
    finish_tasks(backends.database_url, 2, "COMPLETED")
    finish_tasks(backends.database_url, 1, "FAILED")
    wait_for(lambda: len(receiver.at("/admin")) == 3)
    wait_for(lambda: len(receiver.at("/completed")) == 2 and len(receiver.at("/failed")) == 1)
    time.sleep(0.5)
    assert receiver.at("/bob") == []  # alice's tasks only reach alice (and an admin)


# ---------------------------------------------------------------- durability


def test_receiver_down_then_up_every_event_is_delivered(backends, deliverer):
    port = free_port()
    webhook_id, secret = subscribe(backends.database_url, f"http://127.0.0.1:{port}/hook")
    deliverer()
    finish_tasks(backends.database_url, 5)

    def all_failed_once() -> bool:
        rows = deliveries(backends.database_url, webhook_id)
        return len(rows) == 5 and all(r.attempts >= 1 and r.error for r in rows)

    wait_for(all_failed_once, 10)
    assert all(r.status == "PENDING" for r in deliveries(backends.database_url, webhook_id))
    up = Receiver(port)
    try:
        wait_for(lambda: len({r["headers"]["webhook-id"] for r in up.at("/hook")}) == 5, 30)
        rows = wait_for(
            lambda: (
                [
                    r
                    for r in deliveries(backends.database_url, webhook_id)
                    if r.status == "DELIVERED"
                ]
                if all(
                    r.status == "DELIVERED" for r in deliveries(backends.database_url, webhook_id)
                )
                else None
            ),
            10,
        )
        assert all(r.attempts >= 2 and r.response_status == 200 and r.error is None for r in rows)
        for request in up.at("/hook"):
            verify(secret, request)
    finally:
        up.close()


@pytest.mark.slow
def test_a_worker_killed_right_after_a_finish_loses_no_event(
    client, auth, backends, processes, receiver, deliverer, webhook_settings
):
    headers = auth.key()
    webhook_id, secret = subscribe(backends.database_url, receiver.url("/hook"), ["task.completed"])
    processes.settings = webhook_settings
    worker = processes.worker(concurrency=1)
    # The trigger queues the event in the transaction of the change: only the finish matches
    # this subscription, so the first queued event is the finish's commit.
    watcher = psycopg2.connect(backends.database_url)
    watcher.autocommit = True
    try:
        tid = submit(client, headers, "echo", {"n": 1})
        deadline = time.monotonic() + 60
        while not store.queued_events(watcher):
            assert time.monotonic() < deadline, "the task never finished"
            time.sleep(0.002)
        os.killpg(worker.pid, signal.SIGKILL)  # the worker dies right after the commit
        killed_at = time.monotonic()
    finally:
        watcher.close()
    worker.wait(10)
    assert receiver.at("/hook") == []  # no deliverer has run: the event is only in the ledger
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM tasks WHERE id = %s", (tid,))
        assert cur.fetchone() == ("COMPLETED",)
    deliverer()
    wait_for(lambda: receiver.at("/hook"), 10)
    doc = verify(secret, receiver.at("/hook")[0])
    assert doc["type"] == "task.completed" and doc["data"]["id"] == tid
    assert doc["data"]["status"] == "COMPLETED"
    rows = wait_for(
        lambda: [
            r for r in deliveries(backends.database_url, webhook_id) if r.status == "DELIVERED"
        ]
    )
    assert len(rows) == 1 and rows[0].task_id == uuid.UUID(tid)
    assert len(receiver.at("/hook")) == 1
    assert time.monotonic() - killed_at < 30


# ---------------------------------------------------------------- isolation and retries


def test_a_hanging_receiver_delays_only_its_own_deliveries(backends, receiver, deliverer):
    receiver.plan["/hang"] = [0]
    subscribe(backends.database_url, receiver.url("/hang"))
    subscribe(backends.database_url, receiver.url("/ok"))
    deliverer(webhook_timeout=10.0)
    finish_tasks(backends.database_url, 10)
    started = time.monotonic()
    wait_for(lambda: len(receiver.at("/ok")) == 10, 8)
    # Well inside the 10 s the hanging receiver holds its own threads for.
    assert time.monotonic() - started < 5.0
    # The hanging subscription holds at most its cap (2) of the pool.
    assert len(receiver.at("/hang")) == 2
    # Answered now, so the deliverer's stop need not wait out its sends' 10 s.
    receiver.release()


def test_5xx_then_2xx_is_retried_with_the_same_webhook_id(backends, receiver, deliverer):
    receiver.plan["/flaky"] = [500, 503, 200]
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/flaky"))
    deliverer()
    finish_tasks(backends.database_url, 1)
    wait_for(lambda: len(receiver.at("/flaky")) == 3, 15)
    ids = {r["headers"]["webhook-id"] for r in receiver.at("/flaky")}
    assert len(ids) == 1
    row = wait_for(
        lambda: next(
            (d for d in deliveries(backends.database_url, webhook_id) if d.status == "DELIVERED"),
            None,
        ),
        5,
    )
    assert row.attempts == 3 and row.response_status == 200 and str(row.event_id) in ids
    times = [r["at"] for r in receiver.at("/flaky")]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.9  # backoff: about 1 s, then about 2 s


def test_a_redirect_is_not_followed(backends, receiver, deliverer):
    receiver.plan["/moved"] = [302]
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/moved"))
    deliverer()
    finish_tasks(backends.database_url, 1)
    row = wait_for(
        lambda: next((d for d in deliveries(backends.database_url, webhook_id) if d.error), None)
    )
    assert row.response_status == 302 and "redirect" in (row.error or "")
    assert row.status == "PENDING"  # a failed attempt: retried later
    time.sleep(0.3)
    assert receiver.at("/elsewhere") == []


def test_retries_end_at_the_horizon_and_a_failing_subscription_is_disabled(
    backends, receiver, deliverer
):
    receiver.plan["/down"] = [500]
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/down"))
    # Attempts at about 0, 0.5-1 and 1.5-3 s (backoff with jitter); the third is past 1.2 s of
    # failing, so it disables the subscription, and the next would be past the 3 s horizon.
    # (With 2 s, a third attempt before 2 s, a quarter of the runs, disabled nothing.)
    deliverer(webhook_retry_horizon="3s", webhook_disable_after="1.2s")
    finish_tasks(backends.database_url, 1)
    row = wait_for(
        lambda: next(
            (d for d in deliveries(backends.database_url, webhook_id) if d.status == "FAILED"),
            None,
        ),
        15,
    )
    assert row.attempts >= 2 and row.response_status == 500 and row.error == "HTTP 500: ok"
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT disabled, disabled_reason FROM webhooks WHERE id = %s", (webhook_id,))
        disabled, reason = cur.fetchone()
    assert disabled and "failing since" in reason and "HTTP 500" in reason
    # A disabled subscription gets no new event, and a redelivery fails without a request.
    finish_tasks(backends.database_url, 1)
    assert len(deliveries(backends.database_url, webhook_id)) == 1
    count = len(receiver.at("/down"))
    with ledger(backends.database_url) as conn:
        assert store.redeliver(conn, webhook_id, row.id) is not None
    failed = wait_for(
        lambda: next(
            (
                d
                for d in deliveries(backends.database_url, webhook_id)
                if d.status == "FAILED" and "disabled" in (d.error or "")
            ),
            None,
        ),
        5,
    )
    assert failed.id == row.id and len(receiver.at("/down")) == count


def test_a_success_clears_failing_since(backends, receiver, deliverer):
    receiver.plan["/once"] = [500, 200]
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/once"))
    deliverer()
    finish_tasks(backends.database_url, 1)

    def failing_since() -> Any:
        with ledger(backends.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT failing_since FROM webhooks WHERE id = %s", (webhook_id,))
            return cur.fetchone()[0]

    wait_for(failing_since, 5)
    wait_for(lambda: len(receiver.at("/once")) == 2, 10)
    wait_for(lambda: failing_since() is None, 5)


# ---------------------------------------------------------------- safety


def test_a_private_address_is_refused_without_the_flag(backends, receiver, deliverer):
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/private"))
    deliverer(webhook_allow_private=False)
    finish_tasks(backends.database_url, 1)
    row = wait_for(
        lambda: next(
            (d for d in deliveries(backends.database_url, webhook_id) if d.status == "FAILED"),
            None,
        )
    )
    assert "127.0.0.1" in (row.error or "") and "loopback" in (row.error or "")
    assert row.response_status is None
    assert receiver.at("/private") == []


# ---------------------------------------------------------------- several deliverers


@pytest.mark.slow
def test_two_deliverers_send_each_delivery_once(backends, receiver, processes, webhook_settings):
    subscribe(backends.database_url, receiver.url("/a"))
    subscribe(backends.database_url, receiver.url("/b"))
    processes.settings = webhook_settings.with_overrides(webhook_subscription_concurrency=8)
    for _ in range(2):
        processes._spawn("deliverer", [sys.executable, "-m", "cli", "deliverer"], None)
    finish_tasks(backends.database_url, 150)
    wait_for(lambda: len(receiver.at("/a")) >= 150 and len(receiver.at("/b")) >= 150, 60)
    time.sleep(1.0)
    for path in ("/a", "/b"):
        ids = [r["headers"]["webhook-id"] for r in receiver.at(path)]
        assert len(ids) == 150 and len(set(ids)) == 150
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, attempts, count(*) FROM webhook_deliveries GROUP BY 1, 2")
        counts = cur.fetchall()
        cur.execute("SELECT error FROM webhook_deliveries WHERE attempts > 1")
        assert counts == [("DELIVERED", 1, 300)], cur.fetchall()
    logs = " ".join(open(p.log_path).read() for p in processes.procs)  # type: ignore[attr-defined]
    assert "deliverer running" in logs


@pytest.mark.slow
def test_the_deliverer_serves_its_metrics(backends, receiver, processes, webhook_settings):
    receiver.plan["/flaky"] = [500, 200]
    subscribe(backends.database_url, receiver.url("/ok"), ["task.completed"])
    subscribe(backends.database_url, receiver.url("/flaky"), ["task.completed"])
    processes.settings = webhook_settings
    port = free_port()
    processes._spawn(
        "deliverer",
        [sys.executable, "-m", "cli", "deliverer"],
        {"TASKEXEC_METRICS_PORT": str(port)},
    )
    finish_tasks(backends.database_url, 3)

    def scrape() -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("taskexec_webhook_")
        }

    # 3 to /ok, 1 failed then 3 delivered to /flaky (its first answer is a 500).
    wanted = 'taskexec_webhook_attempts_total{result="delivered"}'
    series = wait_for(lambda: (m := scrape()).get(wanted) == 6 and m, 30)
    assert series['taskexec_webhook_attempts_total{result="retrying"}'] == 1
    assert series['taskexec_webhook_attempts_total{result="failed"}'] == 0
    assert series["taskexec_webhook_attempt_seconds_count"] == 7
    assert series["taskexec_webhook_delivery_lag_seconds_count"] == 6
    assert series['taskexec_webhook_delivery_lag_seconds_bucket{le="86400.0"}'] == 6
    assert series["taskexec_webhook_outcomes_unrecorded_total"] == 0


# ---------------------------------------------------------------- rotation, tests, redelivery


def test_a_rotated_secret_signs_beside_the_new_one_until_it_expires(backends, receiver, deliverer):
    old, new = new_secret(), new_secret()
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/rotated"))
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhooks SET secret = %s, previous_secret = %s,"
            " previous_secret_expires_at = now() + interval '1 hour' WHERE id = %s",
            (new, old, webhook_id),
        )
    deliverer()
    finish_tasks(backends.database_url, 1)
    wait_for(lambda: receiver.at("/rotated"))
    request = receiver.at("/rotated")[0]
    signatures = request["headers"]["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    verify(old, request)
    verify(new, request)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhooks SET previous_secret_expires_at = now() - interval '1 second'"
            " WHERE id = %s",
            (webhook_id,),
        )
    finish_tasks(backends.database_url, 1)
    wait_for(lambda: len(receiver.at("/rotated")) == 2)
    later = receiver.at("/rotated")[1]
    assert len(later["headers"]["webhook-signature"].split(" ")) == 1
    verify(new, later)
    with pytest.raises(Exception, match="No matching signature"):
        verify(old, later)


def test_a_test_event_and_a_redelivery(backends, receiver, deliverer):
    webhook_id, secret = subscribe(backends.database_url, receiver.url("/t"))
    deliverer()
    with ledger(backends.database_url) as conn:
        queued = store.enqueue_test_event(conn, webhook_id, {"webhookId": str(webhook_id)})
    assert queued.status == "PENDING" and queued.type == "webhook.test"
    wait_for(lambda: receiver.at("/t"))
    doc = verify(secret, receiver.at("/t")[0])
    assert doc["type"] == "webhook.test" and doc["data"] == {"webhookId": str(webhook_id)}
    row = wait_for(
        lambda: next(
            (d for d in deliveries(backends.database_url, webhook_id) if d.status == "DELIVERED"),
            None,
        )
    )
    with ledger(backends.database_url) as conn:
        again = store.redeliver(conn, webhook_id, row.id)
        assert store.redeliver(conn, uuid.uuid4(), row.id) is None  # another subscription's
    assert again is not None and again.status == "PENDING"
    wait_for(lambda: len(receiver.at("/t")) == 2)
    first, second = receiver.at("/t")
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == str(row.event_id)
    final = wait_for(
        lambda: next(
            (
                d
                for d in deliveries(backends.database_url, webhook_id)
                if d.status == "DELIVERED" and d.attempts == 2
            ),
            None,
        )
    )
    assert final.id == row.id


def _all_in(database_url: str, webhook_id: uuid.UUID, status: str, count: int) -> Any:
    """The subscription's deliveries once there are `count`, every one in `status`; else None."""
    rows = deliveries(database_url, webhook_id)
    return rows if len(rows) == count and all(d.status == status for d in rows) else None


def test_deliveries_failed_in_an_outage_arrive_when_redelivered_by_filter(
    backends, receiver, deliverer
):
    receiver.plan["/out"] = [503]
    webhook_id, secret = subscribe(backends.database_url, receiver.url("/out"))
    other, _ = subscribe(backends.database_url, receiver.url("/fine"))
    # The outage outlasts the retry horizon: every delivery to /out ends FAILED.
    deliverer(webhook_retry_horizon="1s", webhook_disable_after="off")
    finish_tasks(backends.database_url, 5)
    failed = wait_for(lambda: _all_in(backends.database_url, webhook_id, "FAILED", 5), 20)
    tried = len(receiver.at("/out"))
    assert tried >= 5 and {d.error for d in failed} == {"HTTP 503: ok"}
    # The receiver is back; the failed deliveries go again, two per batch, oldest first.
    receiver.plan["/out"] = [200]
    with ledger(backends.database_url) as conn:
        first, after = store.redeliver_matching(conn, webhook_id, status="FAILED", limit=2)
        second, after = store.redeliver_matching(
            conn, webhook_id, status="FAILED", after=after, limit=2
        )
        third, _ = store.redeliver_matching(conn, webhook_id, status="FAILED", after=after, limit=2)
    assert (first, second, third) == (2, 2, 1)
    done = wait_for(lambda: _all_in(backends.database_url, webhook_id, "DELIVERED", 5), 20)
    assert {d.id for d in done} == {d.id for d in failed}
    assert all(d.attempts > 1 and d.error is None for d in done)
    # Each arrived once more, signed, with its event's id as before: a receiver that
    # deduplicates by webhook-id knows them.
    arrived = receiver.at("/out")[tried:]
    assert sorted(r["headers"]["webhook-id"] for r in arrived) == sorted(
        str(d.event_id) for d in failed
    )
    assert all(verify(secret, r)["type"] == "task.completed" for r in arrived)
    # Another subscription's deliveries never failed, and were not sent again.
    assert len(receiver.at("/fine")) == 5
    assert _all_in(backends.database_url, other, "DELIVERED", 5)


def test_a_failed_attempt_is_recorded_whatever_the_disable_period(backends, receiver):
    """`off` (never disable) and a period too long to subtract from now still record.

    Before, `off` compared failing_since with now() - 10^12 s: out of the timestamp range, so
    no failed attempt of any subscription was recorded (each was sent again at its lease's
    end, with no backoff and no end).
    """
    outcome = store.Outcome(False, 503, 12, "HTTP 503")
    for disable_after, disabled in ((None, False), (1e12, False), (60.0, True)):
        # Failing for an hour already: past 60 s, far from 10^12 s.
        webhook_id, _ = subscribe(
            backends.database_url,
            receiver.url("/x"),
            failing_since=datetime.now(UTC) - timedelta(hours=1),
        )
        finish_tasks(backends.database_url, 1, fan_out=True)
        with ledger(backends.database_url) as conn:
            conn.autocommit = True
            (claimed,) = _claim(conn)
        with ledger(backends.database_url) as conn:
            assert store.record_failed_attempt(conn, claimed, outcome, 60.0, disable_after)
        (row,) = deliveries(backends.database_url, webhook_id)
        assert (row.status, row.error, row.locked_until) == ("PENDING", "HTTP 503", None)
        reason = disabled_reason(backends.database_url, webhook_id)
        if disabled:
            assert reason is not None and "failing since" in reason, disable_after
        else:
            assert reason is None, disable_after
        with ledger(backends.database_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM webhooks WHERE id = %s", (webhook_id,))
            cur.execute("DELETE FROM webhook_deliveries")


def test_the_delivery_log_pages_newest_first_with_filters(backends, receiver):
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/log"))
    tasks = finish_tasks(backends.database_url, 3, fan_out=True)
    finish_tasks(backends.database_url, 2, "FAILED", fan_out=True)
    with ledger(backends.database_url) as conn:
        everything = store.list_deliveries(conn, webhook_id, limit=10)
        assert len(everything) == 5 == store.count_delivery_log(conn, webhook_id)[0]
        order = [(d.created_at, d.id) for d in everything]
        assert order == sorted(order, reverse=True)
        first = store.list_deliveries(conn, webhook_id, limit=2)
        rest = store.list_deliveries(
            conn, webhook_id, limit=10, after=(first[-1].created_at, first[-1].id)
        )
        assert [d.id for d in first + rest] == [d.id for d in everything]
        failed = store.list_deliveries(conn, webhook_id, limit=10, task_id=tasks[0])
        assert [d.task_id for d in failed] == [tasks[0]] and failed[0].type == "task.completed"
        assert store.count_delivery_log(conn, webhook_id, status="PENDING") == (5, True)
        assert store.count_delivery_log(conn, webhook_id, status="DELIVERED") == (0, True)
        assert store.get_delivery(conn, uuid.uuid4(), everything[0].id) is None


def test_old_events_and_their_deliveries_are_purged_in_batches(
    backends, receiver, deliverer, webhook_settings
):
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/old"))
    deliverer()  # keeps events a week: its own purge thread deletes none of these
    # A second deliverer, not started, whose purge the test runs by hand.
    worker = Deliverer(webhook_settings.with_overrides(webhook_retention="1h"))
    finish_tasks(backends.database_url, 4)
    wait_for(lambda: len(receiver.at("/old")) == 4)
    wait_for(
        lambda: all(d.status == "DELIVERED" for d in deliveries(backends.database_url, webhook_id))
    )
    old = [d.event_id for d in deliveries(backends.database_url, webhook_id)]
    # A fresh one stays, whether the running deliverer has sent it yet or not.
    finish_tasks(backends.database_url, 1, fan_out=True)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhook_events SET created_at = now() - interval '2 hours'"
            " WHERE id = ANY (%s::uuid[])",
            ([str(e) for e in old],),
        )
    assert worker.purge(threading.Event()) == 4
    worker.db.close()
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM webhook_events")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM webhook_deliveries")
        assert cur.fetchone()[0] == 1


def test_deleting_a_subscription_deletes_its_deliveries(backends, receiver):
    gone, _ = subscribe(backends.database_url, receiver.url("/gone"))
    kept, _ = subscribe(backends.database_url, receiver.url("/kept"))
    finish_tasks(backends.database_url, 3, fan_out=True)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM webhooks WHERE id = %s", (gone,))
        cur.execute("SELECT webhook_id, count(*) FROM webhook_deliveries GROUP BY 1")
        assert cur.fetchall() == [(kept, 3)]


def test_a_delivery_whose_subscription_is_gone_is_never_sent_nor_due(
    backends, receiver, deliverer, webhook_settings
):
    # What a status change racing the subscription's deletion can leave: a delivery row
    # whose subscription no longer exists (deliveries have no foreign key to webhooks).
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/hook"))
    finish_tasks(backends.database_url, 1, fan_out=True)
    orphan = uuid.uuid4()
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO webhook_deliveries (id, event_id, webhook_id, type, task_id)"
            " SELECT gen_random_uuid(), event_id, %s, type, task_id FROM webhook_deliveries",
            (orphan,),
        )
    runner = deliverer()
    wait_for(lambda: len(receiver.at("/hook")) == 1)
    # Its outcome recorded (until then the sent delivery is leased: due when the lease ends).
    wait_for(
        lambda: all(d.status == "DELIVERED" for d in deliveries(backends.database_url, webhook_id))
    )
    with ledger(backends.database_url) as conn:
        # Not due: the loop sleeps instead of looking again at once.
        assert store.next_delivery_in(conn) is None
        with conn.cursor() as cur:
            cur.execute(
                "SELECT status, attempts FROM webhook_deliveries WHERE webhook_id = %s", (orphan,)
            )
            assert cur.fetchall() == [("PENDING", 0)]
            cur.execute("UPDATE webhook_events SET created_at = now() - interval '2 hours'")
    purger = Deliverer(webhook_settings.with_overrides(webhook_retention="1h"))
    assert purger.purge(threading.Event()) == 1  # the orphan does not keep its event
    purger.db.close()
    assert runner.sent == 1
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM webhook_deliveries")
        assert cur.fetchone() == (0,)


def test_an_event_is_written_in_the_status_change_transaction(backends, receiver):
    subscribe(backends.database_url, receiver.url("/tx"))
    row = task_row()
    conn = psycopg2.connect(backends.database_url)
    try:
        store.insert_tasks(conn, [row])
        conn.commit()
        with conn.cursor() as cur:
            cur.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = %s", (row.id,))
        conn.rollback()  # the change did not happen: neither did its event
    finally:
        conn.close()
    with ledger(backends.database_url) as check, check.cursor() as cur:
        assert store.queued_events(check) == 0
        cur.execute("SELECT count(*) FROM webhook_events")
        assert cur.fetchone()[0] == 0


# ---------------------------------------------------------------- the fan-out


def delivery_pairs(database_url: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(event, subscription) of every delivery, sorted."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_id, webhook_id FROM webhook_deliveries ORDER BY 1, 2")
        return [(e, w) for e, w in cur.fetchall()]


def test_the_status_change_queues_only_the_event(backends, receiver):
    subscribe(backends.database_url, receiver.url("/a"))
    subscribe(backends.database_url, receiver.url("/b"))
    finish_tasks(backends.database_url, 3)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        # Committed with the change: the events, queued; no delivery until a fan-out.
        assert store.queued_events(conn) == 3
        cur.execute("SELECT count(*) FROM webhook_deliveries")
        assert cur.fetchone() == (0,)
    assert fan_out_all(backends.database_url) == 3
    pairs = delivery_pairs(backends.database_url)
    assert len(pairs) == 6 and len(set(pairs)) == 6
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        assert store.queued_events(conn) == 0
        cur.execute("SELECT count(*) FROM webhook_events")
        assert cur.fetchone() == (3,)
        # The deliveries keep the event's time (the log's order, the retry horizon's start).
        cur.execute(
            "SELECT count(*) FROM webhook_deliveries d JOIN webhook_events e"
            " ON e.id = d.event_id WHERE d.created_at <> e.created_at"
        )
        assert cur.fetchone() == (0,)


def test_a_subscription_created_after_the_event_gets_none_of_it(backends, receiver):
    before, _ = subscribe(backends.database_url, receiver.url("/before"))
    switched_off, _ = subscribe(backends.database_url, receiver.url("/off"))
    finish_tasks(backends.database_url, 2)
    after, _ = subscribe(backends.database_url, receiver.url("/after"))
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE webhooks SET disabled = true WHERE id = %s", (switched_off,))
    fan_out_all(backends.database_url)
    assert {w for _, w in delivery_pairs(backends.database_url)} == {before}
    # Its own events it does get.
    finish_tasks(backends.database_url, 1, fan_out=True)
    whose = [w for _, w in delivery_pairs(backends.database_url)]
    assert sorted(map(str, whose)) == sorted(map(str, [before, before, before, after]))


def test_a_fan_out_killed_midway_leaves_the_events_queued_and_duplicates_nothing(
    backends, receiver
):
    subscribe(backends.database_url, receiver.url("/a"))
    subscribe(backends.database_url, receiver.url("/b"))
    finish_tasks(backends.database_url, 5)
    doomed = psycopg2.connect(backends.database_url)
    try:
        # A deliverer's fan-out, not yet committed when its backend is killed.
        assert store.fan_out_events(doomed, 500) == store.FanOut(5, 10)
        with ledger(backends.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (doomed.get_backend_pid(),))
    finally:
        doomed.close()
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        assert store.queued_events(conn) == 5
        cur.execute("SELECT count(*) FROM webhook_deliveries")
        assert cur.fetchone() == (0,)
    assert fan_out_all(backends.database_url) == 5
    pairs = delivery_pairs(backends.database_url)
    assert len(pairs) == 10 and len(set(pairs)) == 10
    # An event queued again (its row restored by hand, say) gets no second set of deliveries.
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO webhook_event_queue (id, type, task_id, task, created_at)"
            " SELECT id, type, task_id, task, created_at FROM webhook_events"
        )
    assert fan_out_all(backends.database_url) == 5
    assert delivery_pairs(backends.database_url) == pairs


def test_fan_outs_side_by_side_take_each_event_once(backends, receiver):
    subscribe(backends.database_url, receiver.url("/a"))
    finish_tasks(backends.database_url, 30)
    holder = psycopg2.connect(backends.database_url)
    try:
        # One fan-out holds the oldest 10 (uncommitted); another takes the rest meanwhile.
        assert store.fan_out_events(holder, 10) == store.FanOut(10, 10)
        with ledger(backends.database_url) as conn:
            conn.autocommit = True
            assert store.fan_out_events(conn, 500) == store.FanOut(20, 20)
            assert store.fan_out_events(conn, 500) == store.FanOut(0, 0)
        holder.commit()
    finally:
        holder.close()
    pairs = delivery_pairs(backends.database_url)
    assert len(pairs) == 30 and len({e for e, _ in pairs}) == 30


def test_several_deliverers_fan_out_and_send_each_event_once(backends, receiver, deliverer):
    subscribe(backends.database_url, receiver.url("/a"))
    subscribe(backends.database_url, receiver.url("/b"))
    runners = [deliverer(webhook_subscription_concurrency=8) for _ in range(3)]
    for _ in range(10):
        finish_tasks(backends.database_url, 20)
    wait_for(lambda: len(receiver.at("/a")) >= 200 and len(receiver.at("/b")) >= 200, 30)
    time.sleep(0.5)
    for path in ("/a", "/b"):
        ids = [r["headers"]["webhook-id"] for r in receiver.at(path)]
        assert len(ids) == 200 and len(set(ids)) == 200
    pairs = delivery_pairs(backends.database_url)
    assert len(pairs) == 400 and len(set(pairs)) == 400
    assert sum(r.fanned_out for r in runners) == 200


# ---------------------------------------------------------------- the owner's standing


def revoke(database_url: str, headers: dict[str, str]) -> None:
    with ledger(database_url) as conn:
        assert store.revoke_api_key(conn, headers["X-API-Key"].split("_")[1])


def disabled_reason(database_url: str, webhook_id: uuid.UUID) -> str | None:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT disabled, disabled_reason FROM webhooks WHERE id = %s", (webhook_id,))
        row = cur.fetchone()
    assert row is not None
    return str(row[1]) if row[0] else None


def test_a_rotated_key_keeps_the_subscription_and_the_last_revoked_key_disables_it(
    auth, backends, receiver, deliverer
):
    old, new = auth.key(owner="alice"), auth.key(owner="alice")
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/hook"), ["task.completed"])
    deliverer()
    # Key rotation: one of the owner's keys goes, another stays: nothing changes.
    revoke(backends.database_url, old)
    finish_tasks(backends.database_url, 1)
    wait_for(lambda: len(receiver.at("/hook")) == 1)
    # The owner's last key goes: its subscription must stop receiving the owner's tasks.
    revoke(backends.database_url, new)
    finish_tasks(backends.database_url, 2)
    reason = wait_for(lambda: disabled_reason(backends.database_url, webhook_id))
    assert "every API key of its owner 'alice' is revoked" in reason
    failed = wait_for(
        lambda: [r for r in deliveries(backends.database_url, webhook_id) if r.status == "FAILED"]
    )
    assert all((r.error or "").startswith("subscription disabled: every API key") for r in failed)
    time.sleep(0.5)
    assert len(receiver.at("/hook")) == 1  # nothing was sent after the last revocation
    finish_tasks(backends.database_url, 1)  # disabled: no delivery is queued any more
    assert len(deliveries(backends.database_url, webhook_id)) == 3


def test_scope_all_ends_with_the_owners_last_admin_key(auth, backends, receiver, deliverer):
    admin = auth.key("*", owner="ops")
    auth.key(["webhooks:read", "webhooks:write", "tasks:read"], owner="ops")
    webhook_id, _ = subscribe(
        backends.database_url, receiver.url("/all"), ["task.completed"], owner="ops", admin=True
    )
    deliverer()
    finish_tasks(backends.database_url, 1)  # alice's task: ops may read it while admin
    wait_for(lambda: len(receiver.at("/all")) == 1)
    revoke(backends.database_url, admin)  # ops keeps a key, but none with tasks:admin
    finish_tasks(backends.database_url, 1)
    reason = wait_for(lambda: disabled_reason(backends.database_url, webhook_id))
    assert "no active API key of its owner 'ops' holds tasks:admin" in reason
    time.sleep(0.5)
    assert len(receiver.at("/all")) == 1  # alice's second task never reached ops


def test_an_owner_without_keys_is_not_judged_by_them(backends, receiver, deliverer):
    # A JWT subject has no stored keys: its subscriptions stand until deleted or disabled.
    subscribe(backends.database_url, receiver.url("/carol"), ["task.completed"], owner="carol")
    subscribe(
        backends.database_url, receiver.url("/root"), ["task.completed"], owner="root", admin=True
    )
    deliverer()
    finish_tasks(backends.database_url, 1, owner="carol")
    wait_for(lambda: len(receiver.at("/carol")) == 1 and len(receiver.at("/root")) == 1)


# ---------------------------------------------------------------- prepared statements


def _prepared_here(conn: psycopg2.extensions.connection) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM pg_prepared_statements")
        return {name for (name,) in cur.fetchall()}


def _claim(conn: psycopg2.extensions.connection, free: int = 10) -> list[store.Claimed]:
    return store.claim_deliveries(
        conn, free=free, per_subscription=10, room={}, scan=40, lease_seconds=30
    )


def test_the_deliverers_statements_run_prepared_and_fall_back_to_plain_sql(
    backends, receiver, monkeypatch
):
    """Fan-out, claim, outcome and next-due look-up: prepared on an autocommit connection;
    once a prepared statement is gone from the server (as behind PgBouncer in transaction
    mode), the same calls run as plain SQL and the process stops preparing."""
    monkeypatch.setattr(Prepared, "plain_only", False)  # restored afterwards
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/a"))
    busy_id, _ = subscribe(backends.database_url, receiver.url("/b"))
    finish_tasks(backends.database_url, 3)
    # Not ledger(): `with conn` runs even an autocommit connection's block in a transaction.
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        assert store.fan_out_events(conn, 500) == store.FanOut(3, 6)
        assert store.next_delivery_in(conn) == 0
        # A subscription at its cap (room 0) is skipped; another's room caps its share.
        claimed = store.claim_deliveries(
            conn,
            free=10,
            per_subscription=10,
            room={busy_id: 0, webhook_id: 2},
            scan=40,
            lease_seconds=30,
        )
        assert [c.webhook_id for c in claimed] == [webhook_id] * 2
        outcome = store.Outcome(True, 200, 5, None)
        at = datetime.now(UTC)
        assert store.record_delivered_batch(conn, [(c, outcome, at) for c in claimed]) == 2
        # A lease lost meanwhile records nothing.
        assert store.record_delivered_batch(conn, [(claimed[0], outcome, at)]) == 0
        assert _prepared_here(conn) >= {
            "taskexec_fan_out",
            "taskexec_claim_deliveries",
            "taskexec_record_delivered",
            "taskexec_next_delivery",
        }
        assert not Prepared.plain_only
        with conn.cursor() as cur:
            cur.execute("DEALLOCATE ALL")  # what another server connection would look like
        rest = _claim(conn)
        assert Prepared.plain_only
        assert len(rest) == 4 and not {c.id for c in rest} & {c.id for c in claimed}
        assert store.record_delivered_batch(conn, [(c, outcome, at) for c in rest]) == 4
        assert store.fan_out_events(conn, 500) == store.FanOut(0, 0)
        assert store.next_delivery_in(conn) is None
        assert _prepared_here(conn) == set()
    got = deliveries(backends.database_url, webhook_id) + deliveries(backends.database_url, busy_id)
    assert (
        sorted((d.status, d.response_status, d.attempts) for d in got)
        == [("DELIVERED", 200, 1)] * 6
    )
