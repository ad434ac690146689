"""The one HTTP POST that sends a webhook, on kept connections to the address the guard checked."""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.http1 import Late, Malformed, NoAnswer, read_response
from shared.webhook_targets import SendFailed, TargetRefused, check, resolve_text

#: Most of a response body read (and kept for the error of a failed attempt).
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """A receiver's answer: status, the first 64 KiB of its body, and the time it took."""

    status: int
    body: bytes
    elapsed_ms: int


@dataclass(frozen=True, slots=True)
class _Target:
    """What a URL says about where and how to send, worked out once per URL."""

    scheme: str
    host: str
    port: int
    # The host when it is a literal IP address (no name to resolve), as a connection takes it.
    literal: str | None
    # The request line and host header, ready to be sent.
    head: bytes


#: URLs worked out at most (then forgotten all at once: a deliverer has a few hundred).
MAX_TARGETS = 4096
# Characters a request target (or host) may not hold: http.client refused them too.
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def _target(url: str) -> _Target:
    """`url` worked out for sending; TargetRefused when it is not one to send to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused(f"refused: {url!r} is not a valid URL") from None
    host = parts.hostname or ""
    scheme = parts.scheme
    if scheme not in ("http", "https") or not host:
        raise TargetRefused(f"refused: {url!r} is not an http(s) URL")
    default = 443 if scheme == "https" else 80
    port = port or default
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if _UNSAFE.search(target) or _UNSAFE.search(host):
        raise TargetRefused(f"refused: {url!r} holds a space or a control character")
    try:
        literal: str | None = str(ipaddress.ip_address(host)) if "%" not in host else None
    except ValueError:
        literal = None
    try:
        shown = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise TargetRefused(f"refused: {url!r} has a host name IDNA cannot encode") from None
    host_header = (f"[{shown}]" if ":" in shown else shown) + (
        "" if port == default else f":{port}"
    )
    head = f"POST {target} HTTP/1.1\r\nhost: {host_header}\r\n".encode("latin-1", "strict")
    return _Target(scheme, host, port, literal, head)


class _Connection:
    """A connection to the address the guard checked, not to whatever the name resolves to
    now; TLS verifies the certificate for (and sends SNI of) the URL's host."""

    __slots__ = ("address", "port", "host", "timeout", "tls", "sock")

    def __init__(
        self, address: str, port: int, host: str, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        self.address, self.port, self.host = address, port, host
        self.timeout, self.tls = timeout, tls
        self.sock: socket.socket | None = None

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Sender:
    """POSTs to receivers, keeping connections alive per (scheme, address, port, host).

    Thread-safe: the deliverer's threads share one Sender; a connection serves one request at
    a time and goes back to its destination's idle list (at most `pool_size` kept). Redirects
    are never followed (a 3xx is an answer like any other: not a 2xx, so the attempt failed),
    nothing is retried here (the deliverer schedules retries) except a request whose
    connection was closed before any answer came (a kept one the receiver had closed, or a
    new one reset), sent again once on a new connection; a body is read up to 64 KiB.

    HTTP/1.1 is spoken on the socket directly (shared/http1.py reads the answer): the
    request goes out in one send, and the answer is parsed without http.client's line reads
    and email parser: a fifth of the CPU it took (the deliverer's largest cost per delivery).
    Timeouts: the connection is made within the timeout, and the whole answer (interim ones,
    head and body) must come within the timeout of the request being sent.
    """

    def __init__(self, timeout: float, allow_private: bool, pool_size: int = 4) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self.pool_size = pool_size
        self._idle: dict[tuple[str, str, int, str], list[_Connection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._targets: dict[str, _Target] = {}

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()  # verifies certificates and host names
        return self._tls

    def _take(self, key: tuple[str, str, int, str]) -> _Connection | None:
        """A kept connection to `key` the receiver has not closed, or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            if conn.sock is not None and not _dropped(conn.sock):
                return conn
            conn.close()

    def _keep(self, key: tuple[str, str, int, str], conn: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.pool_size:
                idle.append(conn)
                return
        conn.close()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Reply:
        """POST `body` to `url`; raise TargetRefused (SSRF guard) or SendFailed (no answer).

        `headers` are sent as given, after `host` (from the URL) and before `content-length`
        (the body's), which the Sender writes itself.
        """
        target = self._targets.get(url)
        if target is None:
            target = _target(url)
            if len(self._targets) >= MAX_TARGETS:
                self._targets.clear()
            self._targets[url] = target
        if target.literal is None:
            address = resolve_text(target.host, target.port, self.allow_private)
        else:
            # A literal address resolves to itself: checked as getaddrinfo's answer would be.
            address = target.literal
            if not self.allow_private:
                check(target.host, ipaddress.ip_address(address))
        key = (target.scheme, address, target.port, target.host)
        request = _request(target.head, body, headers)
        started = time.monotonic()
        conn = self._take(key)
        fresh_tries = 2
        while True:
            if conn is None:
                fresh_tries -= 1
                tls = self._context() if target.scheme == "https" else None
                conn = _Connection(address, target.port, target.host, self.timeout, tls)
            try:
                reply, keep = self._exchange(conn, request, started)
            except _Stale:
                # Closed before any answer: a kept connection the receiver had closed, or a
                # new one reset (a receiver's full accept queue): once more on a new one.
                conn.close()
                if fresh_tries <= 0 or time.monotonic() - started > self.timeout:
                    raise SendFailed("connection error: closed by the receiver") from None
                conn = None
                continue
            except BaseException:
                conn.close()
                raise
            if keep:
                self._keep(key, conn)
            else:
                conn.close()
            return reply

    def _exchange(self, conn: _Connection, request: bytes, started: float) -> tuple[Reply, bool]:
        """One request and its answer on `conn`; the reply and whether `conn` may be kept."""
        timeout = self.timeout
        try:
            sock = conn.sock
            if sock is None:
                sock = conn.connect()
            else:
                sock.settimeout(timeout)
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Stale() from exc
        except ssl.SSLError as exc:
            raise SendFailed(f"TLS error: {exc}") from None
        except TimeoutError:
            raise SendFailed(f"timed out after {timeout:g} s") from None
        except OSError as exc:
            raise SendFailed(_describe_os(exc)) from None
        try:
            response = read_response(sock, time.monotonic() + timeout, MAX_RESPONSE_BYTES)
        except NoAnswer as exc:
            raise _Stale() from exc
        except Late as exc:
            if exc.answered:
                raise SendFailed(f"timed out reading the response after {timeout:g} s") from None
            raise SendFailed(f"timed out after {timeout:g} s") from None
        except Malformed as exc:
            raise SendFailed(f"connection error: a malformed response: {exc}") from None
        except ssl.SSLError as exc:
            raise SendFailed(f"TLS error: {exc}") from None
        except OSError as exc:
            raise SendFailed(f"connection error: {exc!r}") from None
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return Reply(response.status, response.body, elapsed_ms), response.reusable

    def close(self) -> None:
        """Close every kept connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


def _request(head: bytes, body: bytes, headers: dict[str, str]) -> bytes:
    """The whole request: request line and host (`head`), `headers`, content-length, body."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # A CR or LF in a name or value would start a header (or a body) of its own.
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers) or "\0" in lines:
        raise ValueError(f"a header holds a line break or NUL: {headers!r}")
    tail = f"{lines}content-length: {len(body)}\r\n\r\n".encode("latin-1")
    return head + tail + body


class _Stale(Exception):
    """A connection failed before any answer (the receiver closed it while it was kept)."""


def _dropped(sock: socket.socket) -> bool:
    """Say, without blocking, whether a kept connection has been closed by the receiver (it is
    readable: an idle HTTP connection has nothing to read otherwise)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _describe_os(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused or unreachable: ConnectionRefusedError"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve: {exc}"
    return f"connection error: {exc!r}"
