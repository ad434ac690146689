"""The in-process API key cache: a read per key per 0.9 s, dropped on a revocation."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import redis

from api.key_cache import KeyCache
from shared import store
from shared.credentials import REVOKED_CHANNEL, announce_revocation, key_id_of

PATH = "/api/v1/tasks/definitions"


def a_key(key_id: str = "abcdefghijkl") -> store.ApiKey:
    return store.ApiKey(
        id=key_id,
        name="n",
        owner="o",
        permissions=["*"],
        key_hash="h",
        rate_limit=None,
        created_at=datetime.now(UTC),
        last_used_at=None,
        revoked_at=None,
    )


class Reads:
    """A read function that counts its calls and can run something in the middle of a read."""

    def __init__(self, key: store.ApiKey | None, during: Any = None) -> None:
        self.key = key
        self.during = during
        self.count = 0

    def __call__(self) -> store.ApiKey | None:
        self.count += 1
        if self.during is not None:
            self.during()
        return self.key


def wait_subscribed(redis_url: str, timeout: float = 5.0) -> None:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while dict(client.pubsub_numsub(REVOKED_CHANNEL)).get(REVOKED_CHANNEL.encode(), 0) < 1:
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.02)


def test_a_key_is_read_once_per_ttl(backends, clean_db):
    cache = KeyCache(backends.redis_url, ttl=0.3)
    reads = Reads(a_key())
    assert [cache.get("abcdefghijkl", reads) for _ in range(50)] == [reads.key] * 50
    assert reads.count == 1
    time.sleep(0.35)
    assert cache.get("abcdefghijkl", reads) is reads.key
    assert reads.count == 2


def test_unknown_keys_are_not_remembered(backends, clean_db):
    cache = KeyCache(backends.redis_url)
    reads = Reads(None)
    assert cache.get("zzzzzzzzzzzz", reads) is None
    assert cache.get("zzzzzzzzzzzz", reads) is None
    assert reads.count == 2


def test_a_read_racing_a_revocation_is_not_stored(backends, clean_db):
    cache = KeyCache(backends.redis_url)
    # The revocation is heard while the read (of the row as it was before) is under way.
    reads = Reads(a_key(), during=lambda: cache.forget("abcdefghijkl"))
    cache.get("abcdefghijkl", reads)
    reads.during = None
    cache.get("abcdefghijkl", reads)
    assert reads.count == 2  # read again: the first row was not kept
    cache.get("abcdefghijkl", reads)
    assert reads.count == 2


def test_an_announced_revocation_is_forgotten_at_once(backends, clean_db):
    cache = KeyCache(backends.redis_url, ttl=60)  # only the announcement can drop it
    reads = Reads(a_key())
    cache.get("abcdefghijkl", reads)
    wait_subscribed(backends.redis_url)
    assert announce_revocation(backends.redis_url, "abcdefghijkl")
    deadline = time.monotonic() + 0.5
    while True:
        cache.get("abcdefghijkl", reads)
        if reads.count == 2:
            break
        assert time.monotonic() < deadline, "the announcement was not heard within 0.5 s"
        time.sleep(0.005)


def test_announcing_without_redis_says_so():
    assert announce_revocation("redis://127.0.0.1:1/0", "abcdefghijkl") is False


def test_requests_share_one_read_and_a_revocation_is_heard(client, auth, backends, monkeypatch):
    headers = auth.key("tasks:definitions:list")
    key_id = key_id_of(headers["X-API-Key"])
    calls: list[str] = []
    real = store.get_api_key

    def counted(conn: Any, wanted: str) -> Any:
        calls.append(wanted)
        return real(conn, wanted)

    monkeypatch.setattr(store, "get_api_key", counted)
    assert [client.get(PATH, headers=headers).status_code for _ in range(20)] == [200] * 20
    assert len(calls) <= 2  # 20 requests in well under 2 × 0.9 s
    wait_subscribed(backends.redis_url)
    with store_connection(backends.database_url) as conn:
        assert store.revoke_api_key(conn, key_id)
    assert announce_revocation(backends.redis_url, key_id)
    revoked_at = time.monotonic()
    while client.get(PATH, headers=headers).status_code != 401:
        assert time.monotonic() - revoked_at < 0.5, "the announced revocation was not heard"
        time.sleep(0.005)


def store_connection(database_url: str) -> Any:
    from cli.base import ledger

    return ledger(database_url)
