"""Idle and slow clients against real gunicorn with config/gunicorn.py: others stay fast."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from typing import Any

import pytest
import requests

from tests.helpers import ROOT
from tests.integration import live_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READ_TIMEOUT = 2.0  # GUNICORN_REQUEST_READ_TIMEOUT for these tests (10 s by default)
WORKER = "config.gunicorn_worker.BufferedThreadWorker"
LIST = "/api/v1/tasks?limit=5"


@pytest.fixture(scope="module")
def server(base_settings, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The deployment's gunicorn (config file, worker class; 4 threads as `taskexec dev`)."""
    extra = ["-c", str(ROOT / "config" / "gunicorn.py"), "--worker-class", WORKER]
    extra += ["--threads", "4", "--keep-alive", "5"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GUNICORN_REQUEST_READ_TIMEOUT", str(READ_TIMEOUT))
        log_dir = tmp_path_factory.mktemp("gunicorn")
        with live_api.gunicorn(base_settings, log_dir, workers=2, extra_args=extra) as url:
            host, port = url.removeprefix("http://").split(":")
            yield {"url": url, "address": (host, int(port))}


@pytest.fixture
def api(server, clean_db) -> dict[str, Any]:
    return server


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=10)


def time_requests(url: str, headers: dict[str, str], count: int) -> list[float]:
    """Seconds each authenticated GET took, every one on a new connection."""
    took = []
    for _ in range(count):
        started = time.monotonic()
        response = requests.get(url + LIST, headers={**headers, "Connection": "close"}, timeout=30)
        took.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
    return sorted(took)


def held_for(
    sock: socket.socket, drip: bytes, interval: float, limit: float
) -> tuple[float, bytes]:
    """Send `drip` every `interval` s until the server answers or closes; (seconds, answer)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if select.select([sock], [], [], interval)[0]:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return time.monotonic() - started, answer
        try:
            sock.sendall(drip)
        except OSError:
            break
    return time.monotonic() - started, b""


def test_idle_and_slow_connections_do_not_delay_other_requests(api, auth):
    headers = auth.key("tasks:list")
    time_requests(api["url"], headers, 4)  # warm: every worker has its pools
    with ExitStack() as stack:
        # 50 idle connections hold 50 threads' worth of gthread waits (5 s each): 4.7 s per
        # request with 10 of them before this worker. Plus four clients that trickle.
        for _ in range(50):
            stack.enter_context(closing(connect(api["address"])))
        trickling = [stack.enter_context(closing(connect(api["address"]))) for _ in range(4)]
        trickling[0].sendall(b"GET /api/v1/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        trickling[1].sendall(
            b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n"
        )
        trickling[2].sendall(b"GET /api/v1/ta")
        trickling[3].sendall(b"\r")
        time.sleep(0.3)
        took = time_requests(api["url"], headers, 40)
    p50, p99 = took[len(took) // 2], took[-1]  # 40 samples: p99 is the slowest
    # 100 ms is the requirement; the margin is for a loaded 2-core CI machine (gthread: >4 s).
    assert p50 < 0.1, f"p50 {p50 * 1000:.0f} ms; all: {took}"
    assert p99 < 0.5, f"p99 {p99 * 1000:.0f} ms; all: {took}"


@pytest.mark.parametrize(
    ("head", "drip"),
    [
        (b"GET /api/v1/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"),
        (b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n", b" "),
        (b"", b"G"),  # not even a request line: an idle connection that sends a byte now and then
    ],
    ids=["headers", "body", "request-line"],
)
def test_a_trickling_client_is_cut_off_after_the_read_timeout(api, head, drip):
    with closing(connect(api["address"])) as sock:
        sock.sendall(head)
        seconds, answer = held_for(sock, drip, interval=0.4, limit=READ_TIMEOUT + 8)
    # Checked about once a second: cut off between the timeout and a second and a half later.
    assert READ_TIMEOUT - 0.5 < seconds < READ_TIMEOUT + 2.5, f"held for {seconds:.1f} s"
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"


def test_an_idle_connection_is_closed_after_the_read_timeout(api):
    with closing(connect(api["address"])) as sock:
        seconds, answer = held_for(sock, b"", interval=0.2, limit=READ_TIMEOUT + 8)
    assert READ_TIMEOUT - 0.5 < seconds < READ_TIMEOUT + 2.5, f"held for {seconds:.1f} s"
    assert answer == b""  # nothing was asked, nothing is answered


def submission(headers: dict[str, str], expect_continue: bool = False) -> tuple[bytes, bytes]:
    body = json.dumps({"taskDefinitionId": "echo", "input": {"message": "slow", "n": 1}}).encode()
    head = "POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if expect_continue:
        head += "Expect: 100-continue\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode(), body


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """One response with a Content-Length body (after any 100 Continue)."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status != 100:
            break
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(data) < length:
        data += sock.recv(65536)
    return status, json.loads(data[:length])


def test_a_slow_upload_within_the_deadline_is_served(api, auth):
    head, body = submission(auth.key("tasks:execute"))
    with closing(connect(api["address"])) as sock:
        started = time.monotonic()
        sock.sendall(head[:20])
        for piece in (head[20:], body[:10], body[10:30], body[30:]):
            time.sleep(0.3)  # 1.2 s in all, within the 2 s
            sock.sendall(piece)
        status, answer = read_response(sock)
        assert status == 201, answer
        assert answer["status"] == "PENDING"
        # The connection stays usable: a second request on it, sent at once, is served too.
        sock.sendall(head + body)
        assert read_response(sock)[0] == 201
    assert time.monotonic() - started < READ_TIMEOUT + 1


def test_expect_100_continue_gets_one_interim_response_before_the_body(api, auth):
    head, body = submission(auth.key("tasks:execute"), expect_continue=True)
    with closing(connect(api["address"])) as sock:
        sock.sendall(head)
        assert select.select([sock], [], [], 1.0)[0], "no 100 Continue"
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, answer = read_response(sock)
        assert status == 201, answer
        assert not select.select([sock], [], [], 0.2)[0]  # no second 100 Continue after it
