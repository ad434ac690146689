"""The nemesis's tools: a cut drops one address's traffic both ways, silently; heal undoes it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.partitions import network
from tests.partitions.network import Network

pytestmark = [pytest.mark.reliability]

#: How long after `rejoin` returns a host may take to reach an address again: far more than
#: an ARP resolution (milliseconds) plus a client's start at a load average of 11 (~1 s).
REJOIN_WITHIN = 5.0

ECHO_SERVER = """
import socket, sys, threading
def serve(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: [c.sendall(c.recv(64)) for _ in iter(int, 1)],
                         daemon=True).start()
for address in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 7000))
    s.listen()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""
#: The connect's timeout says "cut" (a SYN is answered by the kernel at once when the link
#: is up); the echo, which needs the server's thread scheduled, may take longer under load.
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], 7000), timeout=1)
    c.settimeout(5)
    c.sendall(b"x")
    print("ok" if c.recv(8) == b"x" else "bad")
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture
def net() -> Iterator[Network]:
    reason = network.unavailable_reason()
    if reason:
        pytest.skip(f"partition suite needs network namespaces: {reason}")
    built = Network.create({"data": 3, "a1": 1})
    server = subprocess.Popen(
        built.command(
            "data", [sys.executable, "-c", ECHO_SERVER, *built.hosts["data"].addresses[1:]]
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Listening on both addresses before any test connects (a fixed sleep is too short
        # for a Python start on a loaded machine).
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        yield built
    finally:
        server.kill()
        server.wait()
        built.destroy()


def reach(net: Network, address: str) -> str:
    done = subprocess.run(
        net.command("a1", [sys.executable, "-c", CLIENT, address]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip()


def reach_within(net: Network, address: str, seconds: float) -> tuple[str, float]:
    """Try `address` until it answers or `seconds` have passed: the last outcome, time taken."""
    started = time.monotonic()
    while True:
        outcome = reach(net, address)
        took = time.monotonic() - started
        if outcome == "ok" or took > seconds:
            return outcome, took
        time.sleep(0.1)


def test_a_cut_drops_one_address_silently_and_heals(net: Network) -> None:
    postgres, redis = net.hosts["data"].addresses[1:]
    assert (reach(net, postgres), reach(net, redis)) == ("ok", "ok")
    net.cut("a1", postgres)
    # No reset, no ICMP: the connection attempt times out, as across a real partition.
    assert (reach(net, postgres), reach(net, redis)) == ("TimeoutError", "ok")
    net.heal("a1", postgres)
    assert (reach(net, postgres), reach(net, redis)) == ("ok", "ok")
    net.isolate("a1")
    assert (reach(net, postgres), reach(net, redis)) == ("TimeoutError", "TimeoutError")
    net.rejoin("a1")
    # rejoin returns once both ends of the veth are up; the host's failed ARP entries are
    # resolved again on the next try. A host that stays cut fails here after REJOIN_WITHIN.
    outcome, took = reach_within(net, postgres, REJOIN_WITHIN)
    assert outcome == "ok", f"{postgres} still {outcome} {took:.1f}s after the rejoin"
    assert reach(net, redis) == "ok"


def test_hosts_have_their_own_names_and_the_network_is_removed(net: Network) -> None:
    name = subprocess.run(net.command("a1", ["hostname"]), capture_output=True, text=True)
    assert name.stdout.strip() == net.hosts["a1"].hostname != subprocess.getoutput("hostname")
    net.destroy()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(h.netns in listed or h.link in links for h in net.hosts.values())
    assert net.bridge not in links
