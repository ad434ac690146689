"""A revoked API key under real gunicorn: two worker processes, each with its own key cache."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from cli.base import ledger
from shared import store
from shared.credentials import announce_revocation, key_id_of
from tests.integration import live_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATH = "/api/v1/tasks/definitions?limit=1"
WORKERS = 2


@pytest.fixture(scope="module")
def server(base_settings, tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("gunicorn")
    access_log = tmp_path / "access.log"
    extra = ["--access-logfile", str(access_log), "--access-logformat", "%(p)s %(s)s"]
    with live_api.gunicorn(base_settings, tmp_path, workers=WORKERS, extra_args=extra) as url:
        yield {"url": url, "access_log": access_log}


@pytest.fixture
def gunicorn(server, clean_db) -> dict[str, Any]:
    return server


def fetch(url: str, headers: dict[str, str]) -> int:
    # A new connection per request, so the kernel hands requests to both workers.
    return requests.get(url, headers={**headers, "Connection": "close"}, timeout=30).status_code


def served_by_both(gunicorn: dict[str, Any], url: str, headers: dict[str, str]) -> None:
    """Send requests until both workers answered 200 (so both hold the key in their cache)."""
    deadline = time.monotonic() + 30
    while True:
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert set(pool.map(lambda _: fetch(url, headers), range(16))) == {200}
        pids = {
            line.split()[0]
            for line in gunicorn["access_log"].read_text().splitlines()
            if line.endswith(" 200")
        }
        if len(pids) >= WORKERS:
            return
        assert time.monotonic() < deadline, "one worker served every request"


def refused_everywhere_after(url: str, headers: dict[str, str], started: float) -> float:
    """Seconds from `started` until 20 requests in a row (over both workers) were all 401."""
    refused_since: float | None = None
    streak = 0
    while streak < 20:
        now = time.monotonic()
        if fetch(url, headers) == 401:
            refused_since = now if refused_since is None else refused_since
            streak += 1
        else:
            refused_since, streak = None, 0
        assert now - started < 5, "the revoked key is still accepted"
    assert refused_since is not None
    return refused_since - started


def test_an_announced_revocation_reaches_both_workers_at_once(gunicorn, auth, backends):
    headers = auth.key("tasks:definitions:list")
    url = gunicorn["url"] + PATH
    served_by_both(gunicorn, url, headers)
    key_id = key_id_of(headers["X-API-Key"])
    assert key_id
    with ledger(backends.database_url) as conn:
        assert store.revoke_api_key(conn, key_id)
    started = time.monotonic()
    assert announce_revocation(backends.redis_url, key_id)  # what `taskexec keys revoke` does
    assert refused_everywhere_after(url, headers, started) < 0.5


def test_a_revocation_by_sql_alone_reaches_both_workers_within_a_second(gunicorn, auth, backends):
    headers = auth.key("tasks:definitions:list")
    url = gunicorn["url"] + PATH
    served_by_both(gunicorn, url, headers)
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = %s",
            (key_id_of(headers["X-API-Key"]),),
        )
    started = time.monotonic()  # committed: nothing announces it
    assert refused_everywhere_after(url, headers, started) <= 1.0
