"""The limiter's own Redis connection per thread: a restarted Redis is counted in at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.app import create_app
from cli.servers import RedisServer

DEFINITIONS = "/api/v1/tasks/definitions"
LIMIT = 50


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_a_redis_restart_between_requests_is_counted_in_redis(
    base_settings, clean_db, auth, private_redis
):
    app = create_app(
        base_settings.with_overrides(
            ratelimit_enabled=True,
            ratelimit_default=f"{LIMIT}/minute",
            redis_url=private_redis.url,
        )
    )
    try:
        client = app.test_client()
        headers = auth.key("tasks:definitions:list")
        first = client.get(DEFINITIONS, headers=headers)
        assert first.headers["X-RateLimit-Remaining"] == str(LIMIT - 1)
        private_redis.stop()
        private_redis.start()  # empty, and the thread's connection to it is dead
        response = client.get(DEFINITIONS, headers=headers)
        assert response.status_code == 200
        # Counted in the new Redis (the script loaded again), not in process memory.
        assert response.headers["X-RateLimit-Remaining"] == str(LIMIT - 1)
        keys = list(redis.Redis.from_url(private_redis.url).scan_iter("LIMITS:*"))
        assert len(keys) == 1
        again = client.get(DEFINITIONS, headers=headers)
        assert again.headers["X-RateLimit-Remaining"] == str(LIMIT - 2)
    finally:
        app.extensions["taskexec"].db.close()
