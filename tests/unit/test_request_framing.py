"""RequestFramer: when the bytes received so far make a whole request."""

from __future__ import annotations

import pytest

from config.request_framing import Framing, RequestFramer

GET = b"GET /api/v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
)


def framer(max_body: int = 1000) -> RequestFramer:
    return RequestFramer(max_head=8192, max_body=max_body)


@pytest.mark.parametrize("request_bytes", [GET, POST, CHUNKED, b"\r\n" + GET])
def test_a_request_is_whole_only_with_its_last_byte(request_bytes):
    f = framer()
    for byte in request_bytes[:-1]:
        assert f.feed(bytes([byte])) is Framing.PARTIAL
    assert f.feed(request_bytes[-1:]) is Framing.COMPLETE
    assert bytes(f.buf) == request_bytes


def test_in_one_piece_with_the_next_request_behind_it():
    assert framer().feed(POST + GET) is Framing.COMPLETE


def test_chunked_without_trailers():
    body = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert framer().feed(body) is Framing.COMPLETE


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\nHost: x\n",  # bare LF, even before the head ends
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * 9000,  # a head longer than gunicorn accepts
    ],
)
def test_what_gunicorn_refuses_at_once_goes_to_it_at_once(request_bytes):
    assert framer().feed(request_bytes) is Framing.MALFORMED


def test_a_body_over_the_limit_is_not_waited_for():
    f = framer(max_body=10)
    assert f.feed(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n") is Framing.HEAD_ONLY


def test_a_chunked_body_over_the_limit_stops_once_more_than_the_limit_is_here():
    f = framer(max_body=10)
    assert f.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") is Framing.PARTIAL
    assert f.feed(b"64\r\n" + b"a" * 10) is Framing.PARTIAL  # 10 bytes: the app reads 11
    assert f.feed(b"a") is Framing.HEAD_ONLY


def test_expect_100_continue_is_noticed_on_http_11_only():
    f = framer()
    f.feed(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
    assert f.expects_continue and f.head_done
    f = framer()
    f.feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert not f.expects_continue
