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

ECHO_SERVER = """
import socket, sys, threading
def serve(address):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 7000))
    s.listen()
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: [c.sendall(c.recv(64)) for _ in iter(int, 1)],
                         daemon=True).start()
for address in sys.argv[1:]:
    threading.Thread(target=serve, args=(address,), daemon=True).start()
threading.Event().wait()
"""
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], 7000), timeout=1)
    c.settimeout(1)
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
        )
    )
    time.sleep(0.5)
    try:
        yield built
    finally:
        server.kill()
        server.wait()
        built.destroy()


def reach(net: Network, address: str) -> str:
    done = subprocess.run(
        net.command("a1", [sys.executable, "-c", CLIENT, address]), capture_output=True, text=True
    )
    return done.stdout.strip()


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
    time.sleep(0.3)
    assert reach(net, postgres) == "ok"


def test_hosts_have_their_own_names_and_the_network_is_removed(net: Network) -> None:
    name = subprocess.run(net.command("a1", ["hostname"]), capture_output=True, text=True)
    assert name.stdout.strip() == net.hosts["a1"].hostname != subprocess.getoutput("hostname")
    net.destroy()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(h.netns in listed or h.link in links for h in net.hosts.values())
    assert net.bridge not in links
