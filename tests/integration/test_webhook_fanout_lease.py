"""The fan-out leases deliveries within the deliverer's room, sent in lanes; the rest wait."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest
from psycopg2.extras import Json

from cli.base import ledger
from shared import db, store
from tests.helpers import task_row, wait_for
from tests.integration import test_webhook_delivery as base
from workers.deliverer import Deliverer

# The delivery tests' fixtures (pytest finds fixtures among a module's names).
_empty_tables = base._empty_tables
receiver = base.receiver
deliverer = base.deliverer
webhook_settings = base.webhook_settings
finish_tasks, subscribe = base.finish_tasks, base.subscribe

pytestmark = pytest.mark.integration


def rows(database_url: str) -> dict[uuid.UUID, tuple[str, int, datetime | None, datetime]]:
    """Every delivery: id -> (status, attempts, locked_until, next_attempt_at)."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, status, attempts, locked_until, next_attempt_at FROM webhook_deliveries"
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in cur.fetchall()}


def test_the_fan_out_leases_within_the_caps_and_the_rest_is_claimed_later(backends, receiver):
    a, _ = subscribe(backends.database_url, receiver.url("/a"))
    b, _ = subscribe(backends.database_url, receiver.url("/b"))
    busy, _ = subscribe(backends.database_url, receiver.url("/busy"))
    finish_tasks(backends.database_url, 5)
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        # Room: 3 overall; a's default (2), b has 1 left, busy none.
        done, leased = store.fan_out_and_lease(
            conn, 500, free=3, per_subscription=2, room={b: 1, busy: 0}, lease_seconds=30
        )
        assert done == store.FanOut(5, 15)
        assert Counter(c.webhook_id for c in leased) == {a: 2, b: 1}
        now = datetime.now(UTC)
        for c in leased:
            # As a claim returns it: the attempt counted, the event's snapshot, the target.
            assert c.attempts == 1 and c.retry_from is None and c.data is None
            assert now + timedelta(seconds=25) < c.locked_until < now + timedelta(seconds=35)
            assert c.task is not None and c.task_id is not None and c.type == "task.completed"
            assert c.event_created_at == c.created_at
            assert c.url == receiver.url("/a" if c.webhook_id == a else "/b")
            assert not c.disabled and c.owner == "alice" and not c.owner_keyed
        stored = rows(backends.database_url)
        for c in leased:
            assert stored[c.id] == ("PENDING", 1, c.locked_until, c.locked_until)
        waiting = {i for i, r in stored.items() if i not in {c.id for c in leased}}
        assert len(waiting) == 12
        assert {stored[i][:3] for i in waiting} == {("PENDING", 0, None)}

        # The overall room caps too: none free, none leased.
        finish_tasks(backends.database_url, 1)
        assert store.fan_out_and_lease(
            conn, 500, free=0, per_subscription=2, room={}, lease_seconds=30
        ) == (store.FanOut(1, 3), [])

        # The rest is due now and claimed as before; the leased ones are not (not due).
        claimed = store.claim_deliveries(
            conn, free=50, per_subscription=50, room={}, scan=100, lease_seconds=30
        )
        assert {c.id for c in claimed} == set(rows(backends.database_url)) - {c.id for c in leased}
        # The recorder's lease check holds for a lease the fan-out wrote.
        outcome, at = store.Outcome(True, 200, 3, None), datetime.now(UTC)
        assert store.record_delivered_batch(conn, [(c, outcome, at) for c in leased]) == 3
        assert store.next_delivery_in(conn) is not None  # the claimed ones, leased
    final = rows(backends.database_url)
    assert [final[c.id][:2] for c in leased] == [("DELIVERED", 1)] * 3


def test_a_lease_from_the_fan_out_that_lapses_is_delivered_by_another_deliverer(
    backends, receiver, deliverer
):
    subscribe(backends.database_url, receiver.url("/a"))
    finish_tasks(backends.database_url, 3)
    # A deliverer fans out, leases, and dies before sending (its lease: 2 seconds).
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        done, leased = store.fan_out_and_lease(
            conn, 500, free=10, per_subscription=10, room={}, lease_seconds=2
        )
    assert done == store.FanOut(3, 3) and len(leased) == 3
    started = time.monotonic()
    other = deliverer()
    wait_for(lambda: len(receiver.at("/a")) == 3, 20)
    # Not before the lease lapsed: the rows were not due until then.
    assert min(r["at"] for r in receiver.at("/a")) - started > 1.0
    assert sorted(r["headers"]["webhook-id"] for r in receiver.at("/a")) == sorted(
        str(c.event_id) for c in leased
    )
    assert other.leased_at_fan_out == 0
    wait_for(lambda: {r[:2] for r in rows(backends.database_url).values()} == {("DELIVERED", 2)})
    # The dead deliverer's outcome, were it recorded late, would be refused (lease lost).
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        outcome = store.Outcome(True, 200, 1, None)
        assert store.record_delivered_batch(conn, [(leased[0], outcome, datetime.now(UTC))]) == 0


def test_fan_outs_side_by_side_lease_each_delivery_once(backends, receiver):
    a, _ = subscribe(backends.database_url, receiver.url("/a"))
    b, _ = subscribe(backends.database_url, receiver.url("/b"))
    finish_tasks(backends.database_url, 30)
    holder = psycopg2.connect(backends.database_url)
    try:
        # One fan-out holds the oldest 10 (uncommitted, as plain SQL in a transaction);
        # another takes the other 20 meanwhile.
        first, mine = store.fan_out_and_lease(
            holder, 10, free=100, per_subscription=100, room={}, lease_seconds=30
        )
        with closing(db.connect(backends.database_url)) as conn:
            conn.autocommit = True
            second, theirs = store.fan_out_and_lease(
                conn, 500, free=100, per_subscription=100, room={}, lease_seconds=30
            )
            holder.commit()
            assert (first, second) == (store.FanOut(10, 20), store.FanOut(20, 40))
            assert len(mine) == 20 and len(theirs) == 40
            # A third deliverer finds nothing due: every delivery is leased to one of them.
            assert (
                store.claim_deliveries(
                    conn, free=100, per_subscription=100, room={}, scan=200, lease_seconds=30
                )
                == []
            )
    finally:
        holder.close()
    ids = [c.id for c in mine + theirs]
    assert len(set(ids)) == 60 and set(ids) == set(rows(backends.database_url))
    assert not {c.event_id for c in mine} & {c.event_id for c in theirs}
    assert Counter(c.webhook_id for c in mine + theirs) == {a: 30, b: 30}


def test_two_deliverers_fanning_out_send_each_delivery_once(backends, receiver, deliverer):
    subscribe(backends.database_url, receiver.url("/a"))
    subscribe(backends.database_url, receiver.url("/b"))
    runners = [deliverer(webhook_subscription_concurrency=8) for _ in range(2)]
    for _ in range(10):
        finish_tasks(backends.database_url, 15)
        time.sleep(0.05)
    wait_for(lambda: len(receiver.at("/a")) >= 150 and len(receiver.at("/b")) >= 150, 30)
    time.sleep(0.5)
    for path in ("/a", "/b"):
        ids = [r["headers"]["webhook-id"] for r in receiver.at(path)]
        assert len(ids) == 150 and len(set(ids)) == 150
    # Each delivery was leased once (by a fan-out or a claim) and recorded by its holder.
    wait_for(lambda: {r[:2] for r in rows(backends.database_url).values()} == {("DELIVERED", 1)})
    assert len(rows(backends.database_url)) == 300
    assert sum(r.fanned_out for r in runners) == 150
    assert sum(r.leased_at_fan_out for r in runners) > 0  # most sent without a claim


def test_the_render_look_ups_find_each_tasks_attempts_and_replays_in_one_statement(backends):
    tasks = [task_row() for _ in range(3)]
    first, second, bare = (t.id for t in tasks)
    with ledger(backends.database_url) as conn:
        store.insert_tasks(conn, tasks)
        # Two replays of `first` (one transaction: the same created_at, so by id), one of
        # `second`, none of `bare`.
        replays = [task_row(retry_of=first) for _ in range(2)] + [task_row(retry_of=second)]
        for replay in replays:
            store.insert_tasks(conn, [replay])
        with conn.cursor() as cur:
            for tid, attempt, status in [
                (first, 2, "FAILED"),
                (first, 1, "FAILED"),
                (second, 1, "COMPLETED"),
            ]:
                cur.execute(
                    "INSERT INTO task_attempts (task_id, attempt, status, ended_at, error)"
                    " VALUES (%s, %s, %s, now(), %s)",
                    (tid, attempt, status, Json({"message": f"attempt {attempt}"})),
                )
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        ids = [first, second, bare, first]
        attempts, retries = store.attempts_and_retries_of_tasks(conn, ids)
        # Each task's attempts, first to last, as the attempts table holds them.
        assert {t: [(a.attempt, a.status) for a in found] for t, found in attempts.items()} == {
            first: [(1, "FAILED"), (2, "FAILED")],
            second: [(1, "COMPLETED")],
        }
        assert all(a.task_id == t for t, found in attempts.items() for a in found)
        assert [a.error for a in attempts[first]] == [
            {"message": "attempt 1"},
            {"message": "attempt 2"},
        ]
        # The replays, oldest first (the same created_at here: by id); none of `bare`.
        assert retries == {
            first: sorted([replays[0].id, replays[1].id]),
            second: [replays[2].id],
        }
        assert store.attempts_and_retries_of_tasks(conn, []) == ({}, {})


def _explain(cur: Any, statement: Any, params: dict[str, Any], options: str = "") -> list[Any]:
    """EXPLAIN a prepared store statement as it runs (its prefix, its EXECUTE); the plan's rows."""
    cur.execute(statement.prepare)
    head, _, tail = statement.execute.rpartition("EXECUTE ")
    explain = f"EXPLAIN {options} EXECUTE " if options else "EXPLAIN EXECUTE "
    cur.execute(head + explain + tail, [params[p] for p in statement.params])
    return cur.fetchall()


def test_the_lease_statements_look_up_the_owners_api_keys_by_index(backends, receiver):
    """Each leased delivery checks its owner's API keys (CLAIMED_SUBSCRIPTION): by an index.

    A scan of every key per delivery grows with the keys: fanning out 30 deliveries took
    15.9 ms instead of 2.1 with 5,000 keys before migration 0016.
    """
    from shared.store import delivery_leases, webhook_events

    subscribe(backends.database_url, receiver.url("/a"))
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO api_keys (id, name, owner, permissions, key_hash)"
            " SELECT 'many-' || g, 'k', 'owner-' || (g % 1000), ARRAY['tasks:read'], 'h' || g"
            " FROM generate_series(1, 3000) g"
        )
        cur.execute("ANALYZE api_keys")
    lease = {"free": 8, "per": 8, "room_ids": [], "room_free": [], "lease": 30.0}
    statements = [
        (webhook_events._FAN_OUT, {**lease, "limit": 500}),
        (delivery_leases._CLAIM, {**lease, "busy": [], "scan": 128}),
    ]
    try:
        with closing(db.connect(backends.database_url)) as conn:
            conn.autocommit = True  # the prefix's SET LOCALs hold for the one statement
            with conn.cursor() as cur:
                for statement, params in statements:
                    plan = "\n".join(row[0] for row in _explain(cur, statement, params))
                    assert "api_keys_owner" in plan, plan
                    assert "Seq Scan on api_keys" not in plan, plan
    finally:
        with ledger(backends.database_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM api_keys WHERE id LIKE 'many-%'")


def _other_owners_subscriptions(database_url: str, count: int) -> None:
    """`count` subscriptions of other owners (none admin) to every event: none matches."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO webhooks (id, owner, admin, url, events, secret)"
            " SELECT gen_random_uuid(), 'someone-' || g, false, 'http://example.com/x',"
            " %s, 'whsec_x' FROM generate_series(1, %s) g",
            (base.ALL_EVENTS, count),
        )
        cur.execute("ANALYZE webhooks")


def test_a_status_change_probes_the_subscriptions_by_index_however_many(backends, receiver):
    """The trigger asks for the task owner's and the admin subscriptions, each by an index.

    `admin OR owner = ...` was a scan of every subscription in every status change: with
    10,000 of other owners a change took 1,051 us instead of 435 (migrations 0017 and 0018).
    """
    _other_owners_subscriptions(backends.database_url, 2000)
    admin, _ = subscribe(backends.database_url, receiver.url("/admin"), owner="ops", admin=True)
    task = task_row(owner="alice")
    with ledger(backends.database_url) as conn:
        store.insert_tasks(conn, [task])
    with closing(db.connect(backends.database_url)) as conn, conn.cursor() as cur:
        # auto_explain sends the plans of the trigger's statements to this client.
        cur.execute("LOAD 'auto_explain'")
        cur.execute("SET auto_explain.log_min_duration = 0")
        cur.execute("SET auto_explain.log_nested_statements = on")
        cur.execute("SET auto_explain.log_level = notice")
        cur.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = %s", (task.id,))
        conn.commit()
        plans = "".join(conn.notices)
    assert "webhooks_owner_created" in plans and "webhooks_admin_enabled" in plans, plans
    assert "Seq Scan on webhooks" not in plans, plans
    # The admin subscription wanted it: the event is queued, and fanned out to it alone.
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        done, _ = store.fan_out_and_lease(
            conn, 500, free=0, per_subscription=0, room={}, lease_seconds=30
        )
    assert done == store.FanOut(1, 1)
    assert _webhooks_of_deliveries(backends.database_url) == [(admin,)]


def _webhooks_of_deliveries(database_url: str) -> list[tuple[uuid.UUID]]:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT webhook_id FROM webhook_deliveries")
        return cur.fetchall()


def test_the_fan_out_matches_owners_and_admins_by_index(backends, receiver):
    """The fan-out finds each event's subscriptions by owner and the admin ones by index:
    30 events took 40 ms to fan out with 10,000 other owners' subscriptions, 2.5 ms now."""
    from shared.store import webhook_events

    _other_owners_subscriptions(backends.database_url, 2000)
    mine, _ = subscribe(backends.database_url, receiver.url("/mine"), owner="alice")
    admin, _ = subscribe(backends.database_url, receiver.url("/admin"), owner="ops", admin=True)
    # The owner's admin subscription matches once, not once per branch.
    both, _ = subscribe(backends.database_url, receiver.url("/both"), owner="alice", admin=True)
    off, _ = subscribe(backends.database_url, receiver.url("/off"), owner="alice", disabled=True)
    finish_tasks(backends.database_url, 3, owner="alice")
    finish_tasks(backends.database_url, 2, owner="bob")
    statement = webhook_events._FAN_OUT
    params = {"limit": 500, "per": 8, "room_ids": [], "room_free": [], "free": 8, "lease": 30.0}
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            plan = "\n".join(row[0] for row in _explain(cur, statement, params))
            cur.execute(f"DEALLOCATE {statement.name}")
        assert "Seq Scan on webhooks" not in plan, plan
        assert "webhooks_owner_created" in plan and "webhooks_admin_enabled" in plan, plan
        done, _ = store.fan_out_and_lease(
            conn, 500, free=0, per_subscription=0, room={}, lease_seconds=30
        )
    # alice's 3 events: hers, the admin one, her admin one; bob's 2: the two admin ones.
    assert done == store.FanOut(5, 13)
    assert Counter(w for (w,) in _webhooks_of_deliveries(backends.database_url)) == {
        mine: 3,
        admin: 5,
        both: 5,
    }
    assert off not in {w for (w,) in _webhooks_of_deliveries(backends.database_url)}


def _removed_by_filters(plan: Any) -> int:
    """The rows every node of an EXPLAIN (ANALYZE, FORMAT JSON) plan read and threw away."""
    if isinstance(plan, list):
        return sum(_removed_by_filters(p) for p in plan)
    if not isinstance(plan, dict):
        return 0
    own = int(plan.get("Rows Removed by Filter", 0)) * int(plan.get("Actual Loops", 1))
    return own + sum(_removed_by_filters(v) for k, v in plan.items() if k in ("Plan", "Plans"))


def test_a_claim_reads_none_of_the_backlog_of_a_subscription_at_its_cap(backends, receiver):
    """A slow receiver's due backlog (its cap full) is not walked by every claim for the others.

    In due order, the claim read each of those rows and skipped it: 2 ms a claim at 15,000,
    about ten claims a second while rows wait (migration 0020).
    """
    from shared.store import delivery_leases

    slow, _ = subscribe(backends.database_url, receiver.url("/slow"), owner="alice")
    ok, _ = subscribe(backends.database_url, receiver.url("/ok"), owner="bob")
    finish_tasks(backends.database_url, 2000, owner="alice", fan_out=True)  # due first
    finish_tasks(backends.database_url, 5, owner="bob", fan_out=True)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("ANALYZE webhook_deliveries")
    statement = delivery_leases._CLAIM
    params = {
        "busy": [str(slow)],
        "scan": 128,
        "per": 8,
        "room_ids": [],
        "room_free": [],
        "free": 32,
        "lease": 30.0,
    }
    with closing(db.connect(backends.database_url)) as conn:
        with conn.cursor() as cur:  # in a transaction, rolled back: EXPLAIN ANALYZE runs it
            plan = _explain(cur, statement, params, "(ANALYZE, FORMAT JSON)")[0][0]
        conn.rollback()
        assert _removed_by_filters(plan) < 100, plan
        conn.autocommit = True
        claimed = store.claim_deliveries(
            conn, free=32, per_subscription=8, room={slow: 0}, scan=128, lease_seconds=30
        )
    assert {c.webhook_id for c in claimed} == {ok} and len(claimed) == 5


def test_held_deliveries_start_as_their_subscriptions_sends_finish_within_the_cap(
    backends, receiver, deliverer
):
    receiver.plan["/slow"] = [0]  # each request answers after hang_seconds
    receiver.hang_seconds = 0.4
    subscribe(backends.database_url, receiver.url("/slow"))
    runner = deliverer(webhook_subscription_concurrency=2)
    finish_tasks(backends.database_url, 6)
    wait_for(lambda: len(receiver.at("/slow")) == 6, 15)
    # All six leased by the fan-out (2 sent, 4 held), none claimed.
    assert runner.leased_at_fan_out == 6
    # Never more than the cap (2) at once: any three requests span a whole answer's wait.
    arrivals = sorted(r["at"] for r in receiver.at("/slow"))
    assert all(b - a > 0.3 for a, b in zip(arrivals, arrivals[2:], strict=False))
    wait_for(lambda: {r[:2] for r in rows(backends.database_url).values()} == {("DELIVERED", 1)})


def test_a_fast_receivers_burst_is_sent_on_one_lane_not_a_thread_each(
    backends, receiver, deliverer
):
    subscribe(backends.database_url, receiver.url("/fast"))
    runner = deliverer(webhook_subscription_concurrency=8)
    finish_tasks(backends.database_url, 1)  # the first send teaches its attempt time
    wait_for(lambda: len(receiver.at("/fast")) == 1, 10)
    opened = runner.lanes_opened
    finish_tasks(backends.database_url, 10)  # one fan-out batch
    wait_for(lambda: len(receiver.at("/fast")) == 11, 10)
    # A send per thread opened one per delivery up to the cap (8); a lane sends them in
    # turn. (A few lanes only if this machine answered in more than ~15 ms a request.)
    assert runner.lanes_opened - opened <= 3


def test_a_receiver_that_slows_down_gets_its_parallel_sends_back(backends, receiver, deliverer):
    receiver.plan["/slowing"] = [200, 0]  # the first answers at once, the rest after 0.5 s
    receiver.hang_seconds = 0.5
    subscribe(backends.database_url, receiver.url("/slowing"))
    runner = deliverer(webhook_subscription_concurrency=4)
    finish_tasks(backends.database_url, 1)
    wait_for(lambda: len(receiver.at("/slowing")) == 1, 10)
    finish_tasks(backends.database_url, 8)
    wait_for(lambda: len(receiver.at("/slowing")) == 9, 10)
    arrivals = sorted(r["at"] for r in receiver.at("/slowing"))[1:]
    # Learned fast, the burst starts on one lane; while that lane finishes nothing, each
    # round (every poll) opens one more, up to the cap: the 8 arrive within about two
    # answers' time, not eight (4 s on one lane).
    assert arrivals[-1] - arrivals[0] < 2.0
    # Never more than the cap (4) at once: any five requests span a whole answer's wait.
    assert all(b - a > 0.4 for a, b in zip(arrivals, arrivals[4:], strict=False))
    assert runner.lanes_opened >= 4


def test_a_held_delivery_whose_lease_runs_short_is_given_back(backends, receiver, webhook_settings):
    webhook_id, _ = subscribe(backends.database_url, receiver.url("/a"))
    finish_tasks(backends.database_url, 3)
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        # Leases shorter than an attempt may take (2 x the timeout, 2 s, and the margin).
        _, leased = store.fan_out_and_lease(
            conn, 500, free=10, per_subscription=10, room={}, lease_seconds=6
        )
    runner = Deliverer(webhook_settings)
    try:
        for c in leased:
            runner.held.add(c, b"{}")
        stale: list[store.Claimed] = []
        assert runner.held.next(webhook_id, stale) is None
        assert len(stale) == 3 and webhook_id not in runner.held and runner.held.total == 0
        runner.held.give_back(stale)
        # Due now, the attempt not counted: claimed (and sent) as any due delivery.
        assert {r[:3] for r in rows(backends.database_url).values()} == {("PENDING", 0, None)}
        with closing(db.connect(backends.database_url)) as conn:
            conn.autocommit = True
            assert store.next_delivery_in(conn) == 0
            again = store.claim_deliveries(
                conn, free=10, per_subscription=10, room={}, scan=40, lease_seconds=60
            )
        assert {c.id for c in again} == {c.id for c in leased}
        # A stopping deliverer gives back what it holds (only while it still holds the lease).
        runner.held.add(again[0], b"{}")
        runner.held.add(leased[1], b"{}")
        assert runner.release_held() == 2
        assert rows(backends.database_url)[again[0].id][:3] == ("PENDING", 0, None)
        assert rows(backends.database_url)[leased[1].id][:2] == ("PENDING", 1)  # not its lease
    finally:
        runner.db.close()
