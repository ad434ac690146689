"""/healthz and /readyz: no auth, and a quick 503 when Postgres or Redis is unreachable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.app import create_app
from cli.servers import RedisServer, free_port
from config.settings import Settings

# A refused connection answers at once; this only has to catch a probe that hangs.
QUICK = 10.0


@pytest.fixture
def build(settings: Settings) -> Iterator[Any]:
    """Build apps with changed settings; close their pools afterwards."""
    apps = []

    def make(**changes: Any) -> Any:
        app = create_app(settings.with_overrides(**changes))
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["taskexec"].db.close()


def probe(client: Any, path: str) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def test_healthz_answers_without_credentials(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_healthz_does_not_touch_the_backing_services(build):
    down = build(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    assert down.get("/healthz").status_code == 200


def test_readyz_is_200_when_both_services_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_is_a_quick_503_when_redis_is_unreachable(build):
    response, elapsed = probe(build(redis_url=f"redis://127.0.0.1:{free_port()}/0"), "/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"] == {"database": "ok", "broker": "unavailable"}
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert body["error"]["details"] == body["checks"]
    assert elapsed < QUICK


def test_readyz_is_a_quick_503_when_postgres_is_unreachable(build):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    response, elapsed = probe(build(database_url=closed), "/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"] == {"database": "unavailable", "broker": "ok"}
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert elapsed < QUICK


def test_readyz_with_both_down(build):
    response, elapsed = probe(
        build(
            database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
        ),
        "/readyz",
    )
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "unavailable", "broker": "unavailable"}
    assert elapsed < QUICK


def test_readyz_recovers_once_the_service_is_back(settings, build, tmp_path):
    redis = RedisServer(tmp_path / "redis", port=free_port())
    client = build(redis_url=redis.url)
    assert client.get("/readyz").status_code == 503
    with redis:
        assert client.get("/readyz").status_code == 200
