"""Where a webhook may be sent: the SSRF guard, on URLs and on the addresses they resolve to."""

from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlsplit

#: Longest URL a subscription may have.
MAX_URL_LENGTH = 2048

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
    return ipaddress.ip_address(resolve_text(host, port, allow_private))


def resolve_text(host: str, port: int, allow_private: bool) -> str:
    """`resolve`, the address as the text getaddrinfo gave (what a connection is made to)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SendFailed(f"cannot resolve {host}: {exc}") from None
    found: list[str] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]  # an IPv6 zone index is not part of the address
        if raw not in found:
            found.append(raw)
    if not found:
        raise SendFailed(f"cannot resolve {host}: no address")
    if not allow_private:
        for raw in found:
            check(host, ipaddress.ip_address(raw))
    return found[0]


def check(host: str, address: IPAddress) -> None:
    """Raise TargetRefused when `host`'s resolved `address` may not receive webhooks."""
    why = _refusal(address)
    if why is not None:
        raise TargetRefused(
            f"refused: {host} resolves to {address}, {why} (TASKEXEC_WEBHOOK_ALLOW_PRIVATE is off)"
        )


#: `refusal` remembered per address: the range checks cost more than the rest of a send.
_refusal = functools.lru_cache(maxsize=4096)(refusal)
