"""Rate limiting costs one Redis round trip per request, and the headers come from that trip."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from api.app import create_app
from api.limit_storage import SingleTripRedisStorage
from cli.servers import RedisServer, redis_server_binary

LIMIT = 100
OBSERVER = "observer"
DEFINITIONS = "/api/v1/tasks/definitions"


@pytest.fixture
def settings(base_settings):
    return base_settings.with_overrides(ratelimit_enabled=True, ratelimit_default=f"{LIMIT}/minute")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis only this test's app talks to, so its command counts are the limiter's alone."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def build(settings, clean_db) -> Iterator[Callable[[str], Any]]:
    """Build apps on a given Redis URL; close their database pools afterwards."""
    made: list[Any] = []

    def make(redis_url: str) -> Any:
        app = create_app(settings.with_overrides(redis_url=redis_url))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["taskexec"].db.close()


def observe(url: str) -> redis.Redis:
    """A client of a private Redis that logs every command from then on (SLOWLOG at 0 µs)."""
    observer = redis.Redis.from_url(url, client_name=OBSERVER)
    observer.config_set("slowlog-log-slower-than", 0)
    observer.config_set("slowlog-max-len", 1000)
    return observer


def sent_since_reset(observer: redis.Redis) -> list[str]:
    """The commands other clients sent since the last SLOWLOG RESET, oldest first.

    Each is one round trip; the commands a Lua script runs inside Redis are logged too, with
    no client address, and are left out.
    """
    entries = cast("list[dict[str, Any]]", observer.slowlog_get(1000))
    return [
        entry["command"].split()[0].decode().upper()
        for entry in reversed(entries)
        if entry["client_name"] != OBSERVER.encode() and entry["client_address"] != b"?:0"
    ]


def remaining(response: Any) -> int:
    return int(response.headers["X-RateLimit-Remaining"])


def the_only_limit_key(client: redis.Redis) -> str:
    keys = [k.decode() for k in client.scan_iter("LIMITS:*")]
    assert len(keys) == 1, keys
    return keys[0]


def limiter_storage(app: Any) -> SingleTripRedisStorage:
    (limiter,) = app.extensions["limiter"]
    storage = limiter.storage
    assert isinstance(storage, SingleTripRedisStorage)
    return storage


def assert_one_command_per_request(app: Any, observer: redis.Redis, headers: Any) -> None:
    client = app.test_client()
    # The first request may load the Lua script (EVALSHA, SCRIPT LOAD, EVALSHA).
    first = client.get(DEFINITIONS, headers=headers)
    assert first.status_code == 200
    observer.slowlog_reset()
    responses = [client.get(DEFINITIONS, headers=headers) for _ in range(10)]
    assert sent_since_reset(observer) == ["EVALSHA"] * 10
    assert [r.status_code for r in responses] == [200] * 10
    left = remaining(first)
    assert [remaining(r) for r in responses] == list(range(left - 1, left - 11, -1))


def test_a_request_costs_one_redis_command(build, private_redis, auth):
    observer = observe(private_redis.url)
    assert_one_command_per_request(build(private_redis.url), observer, auth.key("*"))


def test_a_unix_socket_url_works_and_costs_one_command(build, auth, tmp_path):
    sock = tmp_path / "redis.sock"
    if len(str(sock)) > 100:
        pytest.skip("temporary path too long for a unix socket")
    server = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock)]
        + ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        observer = observe(f"unix://{sock}")
        app = build(f"unix://{sock}?db=0")
        assert_one_command_per_request(app, observer, auth.key("*"))
        assert the_only_limit_key(observer)
    finally:
        server.terminate()
        server.wait(10)


def test_headers_are_the_count_and_window_end_the_trip_returned(build, private_redis, auth):
    app = build(private_redis.url)
    client = app.test_client()
    observer = redis.Redis.from_url(private_redis.url)
    headers = auth.key("tasks:definitions:list", rate_limit="5/minute")
    resets = []
    for expected in (4, 3, 2, 1, 0):
        response = client.get(DEFINITIONS, headers=headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert remaining(response) == expected
        window_end = time.time() + observer.pttl(the_only_limit_key(observer)) / 1000
        reset = int(response.headers["X-RateLimit-Reset"])
        # Unix time of the window's end, in whole seconds (Redis's TTL is rounded).
        assert window_end - 1 <= reset <= window_end + 2, (reset, window_end)
        resets.append(reset)
    assert max(resets) - min(resets) <= 1  # the window does not move while it lasts
    refused = client.get(DEFINITIONS, headers=headers)
    assert refused.status_code == 429
    assert remaining(refused) == 0
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert abs(int(refused.headers["Retry-After"]) - (resets[-1] - time.time())) <= 2


def test_no_count_is_remembered_past_its_request(build, private_redis, auth):
    app = build(private_redis.url)
    observer = observe(private_redis.url)
    assert remaining(app.test_client().get(DEFINITIONS, headers=auth.key("*"))) == LIMIT - 1
    # Another API process counts two more; a read after the request must see them.
    key = the_only_limit_key(observer)
    observer.incrby(key, 2)
    storage = limiter_storage(app)
    unprefixed = key.removeprefix(storage.prefixed_key(""))
    observer.slowlog_reset()
    assert storage.get(unprefixed) == 3
    assert storage.get_expiry(unprefixed) > time.time() + 50
    assert sent_since_reset(observer) == ["GET", "TTL"]


def test_concurrent_requests_each_see_their_own_count(build, private_redis, auth):
    app = build(private_redis.url)
    headers = auth.key("tasks:definitions:list")
    threads, per_thread = 8, 12
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def run() -> None:
        client = app.test_client()
        start.wait()
        for _ in range(per_thread):
            response = client.get(DEFINITIONS, headers=headers)
            with lock:
                seen.append((response.status_code, remaining(response)))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [status for status, _ in seen] == [200] * threads * per_thread
    # Each request reports the count it made itself: every count once, none twice.
    assert sorted(left for _, left in seen) == list(range(LIMIT - threads * per_thread, LIMIT))


def test_counting_returns_to_redis_when_it_comes_back(build, private_redis, auth):
    app = build(private_redis.url)
    client = app.test_client()
    headers = auth.key("tasks:definitions:list")
    assert remaining(client.get(DEFINITIONS, headers=headers)) == LIMIT - 1
    private_redis.stop()
    # Counted in process memory, which starts from zero.
    assert remaining(client.get(DEFINITIONS, headers=headers)) == LIMIT - 1
    private_redis.start()  # empty: the server keeps nothing on disk
    observer = observe(private_redis.url)
    time.sleep(1.1)  # flask-limiter probes the storage (`check`) at most once a second at first
    deadline = time.monotonic() + 15
    while not list(observer.scan_iter("LIMITS:*")):
        assert time.monotonic() < deadline, "the limiter never went back to Redis"
        assert client.get(DEFINITIONS, headers=headers).status_code == 200
        time.sleep(0.2)
    assert_one_command_per_request(app, observer, headers)
