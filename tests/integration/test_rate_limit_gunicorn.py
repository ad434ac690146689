"""Rate limits under real gunicorn: 4 worker processes share one count in Redis."""

from __future__ import annotations

import http.client
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.integration import live_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATH = "/api/v1/tasks/definitions?limit=1"
WORKERS = 4


@pytest.fixture(scope="module")
def server(base_settings, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """gunicorn with 4 workers on a free port; its access log records each worker's pid.

    Started once for the module (booting 4 workers is the slow part); each test still starts
    from empty counters, because `clean_db` flushes the test Redis.
    """
    # The real default, 100/minute: the 101st request is refused, not the 401st.
    settings = base_settings.with_overrides(ratelimit_enabled=True, ratelimit_default="100/minute")
    tmp_path = tmp_path_factory.mktemp("gunicorn")
    access_log = tmp_path / "access.log"
    extra = ["--access-logfile", str(access_log), "--access-logformat", "%(p)s %(s)s %(U)s"]
    with live_api.gunicorn(settings, tmp_path, workers=WORKERS, extra_args=extra) as url:
        port = int(url.rsplit(":", 1)[1])
        yield {"url": url, "port": port, "access_log": access_log}


@pytest.fixture
def gunicorn(server, clean_db) -> dict[str, Any]:
    return server


def fetch(url: str, headers: dict[str, str]) -> requests.Response:
    # A new connection per request, so the kernel hands requests to different workers.
    return requests.get(url, headers={**headers, "Connection": "close"}, timeout=30)


def test_the_101st_request_is_refused_across_four_workers(gunicorn, auth):
    headers = auth.key("tasks:definitions:list")
    url = gunicorn["url"] + PATH
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: fetch(url, headers), range(100)))
    assert [r.status_code for r in responses] == [200] * 100
    assert {r.headers["X-RateLimit-Limit"] for r in responses} == {"100"}
    # The count ran down to zero, and each response reports its own count: the headers come
    # from the increment itself, so no two concurrent requests see the same number.
    remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in responses)
    assert remaining == list(range(100))

    refused = fetch(url, headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    # Every worker refuses now, not only the one that counted the 100th.
    with ThreadPoolExecutor(max_workers=8) as pool:
        again = list(pool.map(lambda _: fetch(url, headers).status_code, range(12)))
    assert again == [429] * 12

    # Several workers served them: with a count per worker none would have reached 100.
    served_by = Counter(
        line.split()[0]
        for line in gunicorn["access_log"].read_text().splitlines()
        if line.split()[1:2] == ["200"] and PATH.split("?")[0] in line
    )
    assert sum(served_by.values()) >= 100
    assert len(served_by) >= 2, f"all requests went to one worker: {served_by}"

    other = fetch(url, auth.key("tasks:definitions:list", owner="bob"))
    assert other.status_code == 200
    assert other.headers["X-RateLimit-Remaining"] == "99"


def test_a_chunked_body_over_the_limit_is_413(gunicorn, auth):
    headers = {**auth.key("tasks:execute"), "Content-Type": "application/json"}
    chunk = b'{"taskDefinitionId": "echo", "input": {"x": "' + b"a" * (256 * 1024)

    def body() -> Iterator[bytes]:
        yield chunk
        for _ in range(4):
            yield b"a" * (256 * 1024)
        yield b'"}}'

    conn = http.client.HTTPConnection("127.0.0.1", gunicorn["port"], timeout=30)
    try:
        conn.request("POST", "/api/v1/tasks", body=body(), headers=headers, encode_chunked=True)
        response = conn.getresponse()
        payload = response.read()
    except (ConnectionResetError, BrokenPipeError):
        pytest.fail("the server dropped the connection instead of answering 413")
    finally:
        conn.close()
    assert response.status == 413, payload[:300]
    assert b"PAYLOAD_TOO_LARGE" in payload


def test_spoofed_forwarded_for_does_not_escape_the_anonymous_limit(gunicorn):
    url = gunicorn["url"] + PATH
    statuses = [
        fetch(url, {"X-Forwarded-For": f"198.51.100.{n % 250}, 203.0.113.{n % 7}"}).status_code
        for n in range(101)
    ]
    assert statuses[:100] == [401] * 100
    assert statuses[100] == 429
