"""The webhook sender's response reader: framings, interim answers, and malformed answers refused
(whether the bytes come at once or one by one)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shared.http1 import MAX_HEAD_BYTES, Late, Malformed, NoAnswer, Response, read_response

LIMIT = 64


class FakeSocket:
    """Gives `data` back `step` bytes per recv, then the end (or `then`, raised)."""

    def __init__(self, data: bytes, step: int = 65536, then: BaseException | None = None):
        self.data, self.step, self.then = data, step, then
        self.timeouts: list[float] = []

    def settimeout(self, value: float) -> None:
        self.timeouts.append(value)

    def recv(self, size: int) -> bytes:
        if not self.data and self.then is not None:
            raise self.then
        piece, self.data = self.data[: min(size, self.step)], self.data[min(size, self.step) :]
        return piece


def read(data: bytes, step: int = 65536, then: BaseException | None = None) -> Response:
    sock: Any = FakeSocket(data, step, then)
    return read_response(sock, time.monotonic() + 5, LIMIT)


def both(data: bytes, **kw: Any) -> Response:
    """Read `data` whole and byte by byte: the same answer either way."""
    whole = read(data, **kw)
    assert read(data, step=1, **kw) == whole
    return whole


@pytest.mark.parametrize(
    ("wire", "status", "body", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, b"ok", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", 304, b"", True),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, b"", True),  # no reason phrase
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 200, b"ok", True),  # bare LFs
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", 200, b"ok", True),
        (
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            202,
            b"hello world",
            True,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"40\r\n" + b"a" * 64 + b"\r\n0\r\n\r\n",
            200,
            b"a" * 64,
            True,  # exactly the limit: read whole
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"30\r\n" + b"a" * 48 + b"\r\n30\r\n" + b"b" * 48 + b"\r\n0\r\n\r\n",
            200,
            b"a" * 48 + b"b" * 16,
            False,  # the rest is not read: the connection cannot serve another request
        ),
        (b"HTTP/1.1 500 E\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, 500, b"x" * 64, False),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", 200, b"until the end", False),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 100, 200, b"y" * 64, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
        (b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 1\r\n\r\nb", 503, b"b", False),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n",
            200,
            b"",
            False,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            b"ok",
            True,
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Long: one\r\n  two\r\n\tthree\r\nContent-Length: 2\r\n\r\nok",
            200,
            b"ok",
            True,  # obsolete folding: joined with spaces
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n 2\r\n\r\nok", 200, b"ok", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            200,
            b"ok",
            False,  # both framings: chunked wins, the connection is not used again
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzipped", 200, b"zipped", False),
        (b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", 101, b"", False),
    ],
)
def test_framings(wire, status, body, reusable):
    assert both(wire) == Response(status, body, reusable)


@pytest.mark.parametrize(
    ("wire", "issue"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"ICY 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 099 Low\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 OK 200\r\n\r\n", "status line"),
        (b"<html>hello</html>\r\n\r\n", "status line"),
        (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "malformed header"),
        (b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n", "folded line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", "content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "content-length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nok", "closed in the middle"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", "closed in the middle"),
        (b"HTTP/1.1 200 OK\r\nContent-", "closed in the middle"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "closed in the middle"),
        (b"HTTP/1.1 102 Processing\r\n\r\n" * 17 + b"HTTP/1.1 200 OK\r\n\r\n", "interim"),
    ],
)
def test_malformed_answers_are_refused(wire, issue):
    for step in (65536, 1):
        with pytest.raises(Malformed, match=issue):
            read(wire, step=step)


def test_bytes_after_the_answer_make_the_connection_unusable():
    # (Bytes that come after the answer is read are seen when the connection is taken again.)
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"
    assert read(wire) == Response(200, b"ok", False)


def test_an_endless_head_is_refused_without_reading_it_all():
    sock: Any = FakeSocket(b"HTTP/1.1 200 OK\r\nX: " + b"y" * (10 * MAX_HEAD_BYTES))
    with pytest.raises(Malformed, match="longer than"):
        read_response(sock, time.monotonic() + 5, LIMIT)
    assert len(sock.data) > 8 * MAX_HEAD_BYTES


def test_no_byte_at_all_is_no_answer():
    with pytest.raises(NoAnswer):
        read(b"")
    with pytest.raises(NoAnswer):
        read(b"", then=ConnectionResetError())
    with pytest.raises(ConnectionResetError):
        read(b"HTTP/1.1 200 OK\r\n", then=ConnectionResetError())


def test_a_late_answer_says_whether_it_had_begun():
    with pytest.raises(Late) as caught:
        read(b"", then=TimeoutError())
    assert not caught.value.answered
    with pytest.raises(Late) as caught:
        read(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok", then=TimeoutError())
    assert caught.value.answered


def test_every_read_waits_only_until_the_deadline():
    sock: Any = FakeSocket(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", step=4)
    deadline = time.monotonic() + 2
    assert read_response(sock, deadline, LIMIT).body == b"ok"
    assert sock.timeouts and all(0 < t <= 2 for t in sock.timeouts)
    assert sock.timeouts == sorted(sock.timeouts, reverse=True)
    with pytest.raises(Late):
        late: Any = FakeSocket(b"HTTP/1.1 200 OK\r\n")
        read_response(late, time.monotonic() - 1, LIMIT)
