"""Where a webhook may be sent (the SSRF guard) and the one HTTP POST that sends it there."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError

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


class Sender:
    """POSTs to receivers, keeping connections alive per (scheme, address, port, host).

    Thread-safe: the deliverer's threads share one Sender. Redirects are never followed (a
    3xx is an answer like any other: not a 2xx, so the attempt failed), nothing is retried
    here (the deliverer schedules retries), and a body is read up to 64 KiB.
    """

    def __init__(self, timeout: float, allow_private: bool, pool_size: int = 4) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self.pool_size = pool_size
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def _pool(
        self, scheme: str, address: IPAddress, port: int, host: str
    ) -> urllib3.HTTPConnectionPool:
        key = (scheme, str(address), port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
                if scheme == "https":
                    # Connect to the checked address, but verify the certificate (and send
                    # SNI) for the URL's host name.
                    pool = urllib3.HTTPSConnectionPool(
                        str(address),
                        port,
                        maxsize=self.pool_size,
                        timeout=timeout,
                        retries=False,
                        server_hostname=host,
                        assert_hostname=host,
                        cert_reqs="CERT_REQUIRED",
                    )
                else:
                    pool = urllib3.HTTPConnectionPool(
                        str(address), port, maxsize=self.pool_size, timeout=timeout, retries=False
                    )
                self._pools[key] = pool
            return pool

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Reply:
        """POST `body` to `url`; raise TargetRefused (SSRF guard) or SendFailed (no answer)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        scheme = parts.scheme
        if scheme not in ("http", "https") or not host:
            raise TargetRefused(f"refused: {url!r} is not an http(s) URL")
        port = parts.port or (443 if scheme == "https" else 80)
        address = resolve(host, port, self.allow_private)
        pool = self._pool(scheme, address, port, host)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        default_port = port == (443 if scheme == "https" else 80)
        host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
        started = time.monotonic()
        deadline = started + self.timeout
        try:
            response = pool.urlopen(
                "POST",
                target,
                body=body,
                headers={**headers, "host": host_header},
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
            try:
                chunks: list[bytes] = []
                size = 0
                while size < MAX_RESPONSE_BYTES:
                    if time.monotonic() > deadline:
                        raise SendFailed(f"timed out reading the response after {self.timeout:g} s")
                    chunk = response.read(min(16384, MAX_RESPONSE_BYTES - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                status = response.status
                if size >= MAX_RESPONSE_BYTES:
                    # The rest is not wanted: close rather than drain an unbounded body.
                    response.close()
            finally:
                response.release_conn()
        except HTTPError as exc:
            raise SendFailed(_describe(exc, self.timeout)) from None
        except OSError as exc:
            raise SendFailed(f"connection error: {exc}") from None
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return Reply(status, b"".join(chunks), elapsed_ms)

    def close(self) -> None:
        """Close every kept connection."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def _describe(exc: HTTPError, timeout: float) -> str:
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return f"connection refused or unreachable: {exc.__class__.__name__}"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return f"connection error: {exc}"
    return f"request failed: {exc}"
