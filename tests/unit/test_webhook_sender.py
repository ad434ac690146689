"""The webhook sender on the wire: kept connections, receivers closing them, chunked and
HTTP/1.0 answers, TLS verified for the URL's host while connecting to the checked address."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.webhook_sender import MAX_RESPONSE_BYTES, Sender
from shared.webhook_targets import SendFailed, TargetRefused

Answer = Callable[[bytes], bytes]


class RawServer:
    """A TCP server answering each request with `answer(request)`; records every connection.

    After each answer it keeps the connection unless `close_after` is set.
    """

    def __init__(
        self, answer: Answer, close_after: bool = False, tls: ssl.SSLContext | None = None
    ):
        self.answer, self.close_after, self.tls = answer, close_after, tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":", 1)[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                conn.sendall(self.answer(head))
                if self.close_after:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def servers() -> Iterator[list[RawServer]]:
    made: list[RawServer] = []
    yield made
    for server in made:
        server.close()


def serve(made: list[RawServer], answer: Answer, **kw: Any) -> RawServer:
    server = RawServer(answer, **kw)
    made.append(server)
    return server


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_a_connection_is_kept_and_used_again(servers):
    server = serve(servers, lambda _: OK)
    sender = Sender(timeout=5, allow_private=True)
    for _ in range(3):
        reply = sender.post(f"http://127.0.0.1:{server.port}/hook", b"{}", {"x-n": "1"})
        assert reply.status == 200 and reply.body == b"ok"
    assert server.connections == 1 and len(server.requests) == 3
    first = server.requests[0].decode()
    assert first.startswith("POST /hook HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n" in first and "content-length: 2\r\n" in first
    assert "accept-encoding" not in first.lower()
    sender.close()


def test_a_connection_the_receiver_closed_is_replaced(servers):
    server = serve(servers, lambda _: OK, close_after=True)  # keep-alive promised, then closed
    sender = Sender(timeout=5, allow_private=True)
    for _ in range(3):
        assert sender.post(f"http://127.0.0.1:{server.port}/", b"{}", {}).status == 200
    assert server.connections == 3 and len(server.requests) == 3  # each request sent once
    sender.close()


def test_connection_close_chunked_and_http_1_0_answers(servers):
    chunked = serve(
        servers,
        lambda _: (
            b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ),
    )
    closing = serve(
        servers,
        lambda _: b"HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy",
    )
    old = serve(servers, lambda _: b"HTTP/1.0 200 OK\r\n\r\nuntil the end", close_after=True)
    sender = Sender(timeout=5, allow_private=True)
    for _ in range(2):
        reply = sender.post(f"http://127.0.0.1:{chunked.port}/", b"{}", {})
        assert (reply.status, reply.body) == (202, b"hello world")
        reply = sender.post(f"http://127.0.0.1:{closing.port}/", b"{}", {})
        assert (reply.status, reply.body) == (503, b"busy")
        reply = sender.post(f"http://127.0.0.1:{old.port}/", b"{}", {})
        assert (reply.status, reply.body) == (200, b"until the end")
    assert chunked.connections == 1  # kept
    assert closing.connections == 2 and old.connections == 2  # closed as the receiver said
    sender.close()


def test_a_receiver_that_does_not_answer_times_out(servers):
    hung = threading.Event()

    def never(_: bytes) -> bytes:
        hung.wait(10)
        return OK

    server = serve(servers, never)
    sender = Sender(timeout=0.5, allow_private=True)
    with pytest.raises(SendFailed, match="timed out"):
        sender.post(f"http://127.0.0.1:{server.port}/", b"{}", {})
    hung.set()
    sender.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for receiver.test (its own trust anchor)."""
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=receiver.test", "-addext", "subjectAltName=DNS:receiver.test",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def test_tls_is_verified_for_the_urls_host_at_the_checked_address(
    servers, certificate, monkeypatch
):
    key, cert = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = serve(servers, lambda _: OK, tls=context)
    real = socket.getaddrinfo

    def pinned(host: str, port: int, *args: Any, **kw: Any) -> Any:
        return real("127.0.0.1" if host.endswith(".test") else host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", pinned)
    trusting = ssl.create_default_context(cafile=str(cert))
    sender = Sender(timeout=5, allow_private=True)
    sender._tls = trusting  # the system's trust store would refuse a self-signed receiver
    reply = sender.post(f"https://receiver.test:{server.port}/hook", b"{}", {})
    assert reply.status == 200 and reply.body == b"ok"
    assert f"host: receiver.test:{server.port}\r\n" in server.requests[0].decode()
    # The same address under another name: the certificate does not match, nothing is sent.
    with pytest.raises(SendFailed, match="TLS error"):
        sender.post(f"https://other.test:{server.port}/hook", b"{}", {})
    # And a receiver the trust store does not know is refused.
    with pytest.raises(SendFailed, match="TLS error"):
        Sender(timeout=5, allow_private=True).post(f"https://receiver.test:{server.port}/", b"", {})
    assert len(server.requests) == 1
    sender.close()


def test_interim_answers_are_skipped_and_a_chunked_answer_keeps_the_connection(servers):
    server = serve(
        servers,
        lambda _: (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
            b"x-folded: one\r\n two\r\n\r\n2;ext=1\r\nok\r\n0\r\ntrailer: 1\r\n\r\n"
        ),
    )
    sender = Sender(timeout=5, allow_private=True)
    for _ in range(3):
        reply = sender.post(f"http://127.0.0.1:{server.port}/", b"{}", {})
        assert (reply.status, reply.body) == (200, b"ok")
    assert server.connections == 1 and len(server.requests) == 3
    sender.close()


def test_a_body_ended_by_the_close_is_read_and_the_connection_not_kept(servers):
    server = serve(servers, lambda _: b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 70000, close_after=True)
    sender = Sender(timeout=5, allow_private=True)
    for _ in range(2):
        reply = sender.post(f"http://127.0.0.1:{server.port}/", b"{}", {})
        assert reply.status == 200 and reply.body == b"z" * MAX_RESPONSE_BYTES
    assert server.connections == 2
    sender.close()


@pytest.mark.parametrize(
    ("answer", "issue"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "malformed response: not an HTTP/1.x status line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed response: not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"y" * 70000 + b"\r\n\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 150 + b"\r\n", "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nnot a header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx", "invalid content-length"),
    ],
)
def test_a_malformed_answer_is_a_send_failure_and_the_connection_is_dropped(servers, answer, issue):
    bad = serve(servers, lambda _: answer)
    sender = Sender(timeout=5, allow_private=True)
    for _ in range(2):
        with pytest.raises(SendFailed, match=issue):
            sender.post(f"http://127.0.0.1:{bad.port}/", b"{}", {})
    assert bad.connections == 2 and len(bad.requests) == 2  # none kept, none sent twice
    sender.close()


def test_an_answer_that_never_ends_times_out_within_the_deadline(servers):
    server = serve(servers, lambda _: b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok")
    sender = Sender(timeout=0.5, allow_private=True)
    started = time.monotonic()
    with pytest.raises(SendFailed, match="timed out reading the response"):
        sender.post(f"http://127.0.0.1:{server.port}/", b"{}", {})
    assert time.monotonic() - started < 1.5
    sender.close()


def test_a_request_is_one_write_with_the_headers_in_order(servers):
    server = serve(servers, lambda _: OK)
    sender = Sender(timeout=5, allow_private=True)
    body = '{"é":1}'.encode()
    sender.post(f"http://127.0.0.1:{server.port}/p?q=1", body, {"a": "1", "b": "2"})
    assert (
        server.requests[0]
        == (
            f"POST /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:{server.port}\r\na: 1\r\nb: 2\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    with pytest.raises(ValueError, match="line break"):
        sender.post(f"http://127.0.0.1:{server.port}/", b"", {"a": "1\r\nx-injected: 1"})
    assert len(server.requests) == 1
    sender.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/", "http://127.0.0.1/a\x01b", "ftp://127.0.0.1/"]
)
def test_a_url_that_cannot_be_sent_to_is_refused(url):
    with pytest.raises(TargetRefused, match="refused"):
        Sender(timeout=5, allow_private=True).post(url, b"{}", {})
