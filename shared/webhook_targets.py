"""Where a webhook may be sent (the SSRF guard) and the one HTTP POST that sends it there."""

from __future__ import annotations

import http.client
import ipaddress
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Longest URL a subscription may have.
MAX_URL_LENGTH = 2048
#: Most of a response body read (and kept for the error of a failed attempt).
MAX_RESPONSE_BYTES = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud instance-metadata and platform endpoints that are not in a private range (or that
#: deserve their own reason): AWS/GCP/Azure/OpenStack, ECS task metadata, Alibaba, Azure's
#: wire server, AWS's IPv6 IMDS.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "168.63.129.16",
        "fd00:ec2::254",
    )
)


class TargetRefused(Exception):
    """The destination is not one a webhook may reach; the message says why."""


class SendFailed(Exception):
    """The request did not produce a response (connect error, timeout, TLS...)."""


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not receive webhooks (without the private flag); None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return refusal(mapped)
        if address.teredo is not None:
            return refusal(address.teredo[1])
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    )
    for name, hit in checks:
        if hit:
            return f"a {name} address"
    if not address.is_global:
        return "a non-public address"  # shared (100.64/10), documentation and other special ranges
    return None


def validate_url(url: str, allow_private: bool = False) -> str | None:
    """Why `url` cannot be a subscription's URL (an API 400's issue), or None when it can.

    Only absolute http/https URLs with a host, no credentials, at most 2048 characters.
    A literal IP address (or `localhost`) is checked like a resolved one unless
    `allow_private` (TASKEXEC_WEBHOOK_ALLOW_PRIVATE); names are resolved, and checked again,
    at every delivery, not here (a receiver's DNS may change, and may not exist yet).
    """
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    host = parts.hostname
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if port == 0:
        return "has port 0"
    if any(c.isspace() for c in url):
        return "contains whitespace"
    if allow_private:
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return "is a loopback address (set TASKEXEC_WEBHOOK_ALLOW_PRIVATE=true for development)"
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None
    why = refusal(literal)
    if why is not None:
        return f"is {why} (set TASKEXEC_WEBHOOK_ALLOW_PRIVATE=true for development)"
    return None


def resolve(host: str, port: int, allow_private: bool) -> IPAddress:
    """The address to connect to for `host`: every address it resolves to must be allowed.

    Raises TargetRefused naming the address and why, or SendFailed if the name does not
    resolve. The caller connects to the returned address itself, so a DNS answer that
    changes between this check and the connection (rebinding) cannot redirect it.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SendFailed(f"cannot resolve {host}: {exc}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]  # an IPv6 zone index is not part of the address
        address = ipaddress.ip_address(raw)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise SendFailed(f"cannot resolve {host}: no address")
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise TargetRefused(
                    f"refused: {host} resolves to {address}, {why}"
                    " (TASKEXEC_WEBHOOK_ALLOW_PRIVATE is off)"
                )
    return addresses[0]


@dataclass(frozen=True)
class Reply:
    """A receiver's answer: status, the first 64 KiB of its body, and the time it took."""

    status: int
    body: bytes
    elapsed_ms: int


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection to the address the guard checked, not to whatever the name
    resolves to now; TLS verifies the certificate for (and sends SNI of) the URL's host."""

    def __init__(
        self, address: str, port: int, host: str, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(address, port, timeout=timeout)
        self.server_host = host
        self.tls = tls

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.server_host)
        self.sock = sock


class Sender:
    """POSTs to receivers, keeping connections alive per (scheme, address, port, host).

    Thread-safe: the deliverer's threads share one Sender; a connection serves one request at
    a time and goes back to its destination's idle list (at most `pool_size` kept). Redirects
    are never followed (a 3xx is an answer like any other: not a 2xx, so the attempt failed),
    nothing is retried here (the deliverer schedules retries) except a request whose
    connection was closed before any answer came (a kept one the receiver had closed, or a
    new one reset), sent again once on a new connection; a body is read up to 64 KiB. Built
    on http.client, not urllib3: a request costs less than half the CPU (the deliverer's
    largest cost per delivery).
    """

    def __init__(self, timeout: float, allow_private: bool, pool_size: int = 4) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self.pool_size = pool_size
        self._idle: dict[tuple[str, str, int, str], list[_Connection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

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
        """POST `body` to `url`; raise TargetRefused (SSRF guard) or SendFailed (no answer)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        scheme = parts.scheme
        if scheme not in ("http", "https") or not host:
            raise TargetRefused(f"refused: {url!r} is not an http(s) URL")
        port = parts.port or (443 if scheme == "https" else 80)
        address = resolve(host, port, self.allow_private)
        key = (scheme, str(address), port, host)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        default_port = port == (443 if scheme == "https" else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
        wire = {"host": host_header, **headers, "content-length": str(len(body))}
        started = time.monotonic()
        conn = self._take(key)
        fresh_tries = 2
        while True:
            if conn is None:
                fresh_tries -= 1
                tls = self._context() if scheme == "https" else None
                conn = _Connection(str(address), port, host, self.timeout, tls)
            try:
                reply, keep = self._exchange(conn, target, body, wire, started)
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

    def _exchange(
        self, conn: _Connection, target: str, body: bytes, headers: dict[str, str], started: float
    ) -> tuple[Reply, bool]:
        """One request and its answer on `conn`; the reply and whether `conn` may be kept."""
        deadline = started + self.timeout
        try:
            conn.putrequest("POST", target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders(body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Stale() from exc
        except ssl.SSLError as exc:
            raise SendFailed(f"TLS error: {exc}") from None
        except TimeoutError:
            raise SendFailed(f"timed out after {self.timeout:g} s") from None
        except OSError as exc:
            raise SendFailed(_describe_os(exc)) from None
        try:
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            raise _Stale() from exc
        except TimeoutError:
            raise SendFailed(f"timed out after {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            raise SendFailed(f"connection error: {exc!r}") from None
        chunks: list[bytes] = []
        size = 0
        try:
            while size < MAX_RESPONSE_BYTES:
                if time.monotonic() > deadline:
                    raise SendFailed(f"timed out reading the response after {self.timeout:g} s")
                chunk = response.read(min(16384, MAX_RESPONSE_BYTES - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except TimeoutError:
            raise SendFailed(f"timed out reading the response after {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            raise SendFailed(f"connection error: {exc!r}") from None
        # Kept only when the answer was read whole and the receiver keeps the connection; the
        # rest of a longer body is not wanted (closing beats draining an unbounded one).
        keep = response.isclosed() and not response.will_close
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return Reply(response.status, b"".join(chunks), elapsed_ms), keep

    def close(self) -> None:
        """Close every kept connection."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


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
