"""The webhook SSRF guard and sender: which addresses are refused, and what one POST does."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.webhook_sender import MAX_RESPONSE_BYTES, Sender
from shared.webhook_signing import event_body, headers, new_secret, signing_secrets
from shared.webhook_targets import SendFailed, TargetRefused, refusal, resolve, validate_url
from workers.deliverer import backoff


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("168.63.129.16", "metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address, reason):
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and reason in why


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "issue"),
    [
        ("ftp://example.com/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("example.com/hook", "http or https"),
        ("https:///hook", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com:99999/", "not a valid URL"),
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://localhost:9000/hook", "loopback"),
        ("https://example.com/" + "a" * 2100, "longer than"),
    ],
)
def test_validate_url_refuses(url, issue):
    problem = validate_url(url)
    assert problem is not None and issue in problem


def test_validate_url_accepts_public_urls_and_private_ones_with_the_flag():
    assert validate_url("https://hooks.example.com/taskexec?x=1") is None
    assert validate_url("http://93.184.216.34:8080/") is None
    assert validate_url("http://127.0.0.1:8080/", allow_private=True) is None
    assert validate_url("ftp://127.0.0.1/", allow_private=True) is not None


def test_a_name_is_refused_when_any_of_its_addresses_is_private(monkeypatch):
    def fake(host: str, port: int, **kw: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(TargetRefused, match="10.0.0.7, a private address"):
        resolve("mixed.example", 443, allow_private=False)
    assert str(resolve("mixed.example", 443, allow_private=True)) == "93.184.216.34"


def test_an_unresolvable_name_is_a_send_failure():
    with pytest.raises(SendFailed, match="cannot resolve"):
        resolve("no-such-host.invalid", 80, allow_private=True)


# ---------------------------------------------------------------- the sender


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path == "/big":
            payload = b"x" * (1024 * 1024)
            self.send_response(500)
        elif self.path == "/redirect":
            payload = b""
            self.send_response(307)
            self.send_header("location", "/elsewhere")
        else:
            payload = b"fine"
            self.send_response(204 if self.path == "/empty" else 200)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def test_the_sender_connects_to_the_checked_address_and_keeps_the_host(server, monkeypatch):
    resolved: list[str] = []
    real = socket.getaddrinfo

    def pinned(host: str, port: int, *args: Any, **kw: Any) -> Any:
        resolved.append(host)
        if host == "receiver.test":
            return real("127.0.0.1", port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", pinned)
    sender = Sender(timeout=5, allow_private=True)
    reply = sender.post(f"http://receiver.test:{server}/hook?x=1", b"{}", {"x-test": "1"})
    assert reply.status == 200 and reply.body == b"fine" and reply.elapsed_ms >= 0
    request = _Handler.seen[0]
    assert request["path"] == "/hook?x=1"
    assert request["headers"]["host"] == f"receiver.test:{server}"
    # The name was resolved once, by the guard; the connection went to the address it
    # checked (only that literal is looked up again), so no second DNS answer is used.
    assert resolved[0] == "receiver.test" and set(resolved[1:]) <= {"127.0.0.1"}
    sender.close()


def test_the_sender_reads_64_kib_follows_no_redirect_and_refuses_private(server):
    sender = Sender(timeout=5, allow_private=True)
    big = sender.post(f"http://127.0.0.1:{server}/big", b"{}", {})
    assert big.status == 500 and len(big.body) == MAX_RESPONSE_BYTES
    moved = sender.post(f"http://127.0.0.1:{server}/redirect", b"{}", {})
    assert moved.status == 307
    assert [r["path"] for r in _Handler.seen] == ["/big", "/redirect"]
    guarded = Sender(timeout=5, allow_private=False)
    with pytest.raises(TargetRefused, match="loopback"):
        guarded.post(f"http://127.0.0.1:{server}/hook", b"{}", {})
    assert len(_Handler.seen) == 2
    sender.close()


def test_a_closed_port_is_a_send_failure():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SendFailed):
        Sender(timeout=2, allow_private=True).post(f"http://127.0.0.1:{port}/", b"{}", {})


# ---------------------------------------------------------------- signing and backoff


def test_headers_sign_with_every_current_secret():
    from datetime import UTC, datetime, timedelta

    from standardwebhooks.webhooks import Webhook

    now = datetime.now(UTC)
    old, new = new_secret(), new_secret()
    assert new.startswith("whsec_") and old != new
    body = event_body("task.completed", now, {"id": "t"})
    keys = signing_secrets(new, old, now + timedelta(hours=1), now)
    sent = headers("evt-1", now, body, keys)
    assert len(sent["webhook-signature"].split(" ")) == 2
    for key in (old, new):
        assert Webhook(key).verify(body, sent)["data"] == {"id": "t"}
    assert signing_secrets(new, old, now - timedelta(seconds=1), now) == [new]


def test_backoff_doubles_with_jitter_and_is_capped():
    import random

    rng = random.Random(7)
    for attempts in range(1, 8):
        full = 2 ** (attempts - 1)
        delay = backoff(attempts, rng)
        assert full / 2 <= delay <= full
    assert 1800 <= backoff(40, rng) <= 3600
