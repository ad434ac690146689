"""A simulated network of test hosts: Linux network namespaces on one bridge, and link cuts.

Every host is a network namespace with one veth into a bridge of the root namespace, which
has the bridge's address too, so the test itself reaches every host. Names carry the pid of
the run (`txp-<pid>-<host>` for namespaces, `txp<pid hex>-<host>` for links): two runs never
collide, and a run that was SIGKILLed is cleaned up by the next one (`remove_stale`).

A cut between a host and one address of another host drops every packet both ways, silently,
as a real partition does (no RST, no ICMP): on the host's side the address is pinned to a MAC
that no interface has, so its frames die on the bridge; on the other side a policy rule sends
replies from that address to the host through a route to the same nowhere. Only iproute2 is
needed, no netfilter. Cutting one address (Postgres) leaves the host's other links (Redis)
alone. `isolate` takes a host's veth down: it loses every link at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

PREFIX = "txp"
#: A locally administered MAC that no interface here has: frames sent to it go nowhere.
GHOST_MAC = "02:00:5e:00:de:ad"
#: The routing table (in a served host) whose one route leads to the ghost.
CUT_TABLE = 77
#: Host part of the ghost's address in the subnet.
GHOST_HOST = 250
_NETNS = re.compile(rf"^{PREFIX}-(\d+)-")
_LINK = re.compile(rf"^{PREFIX}([0-9a-f]+)-")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "`ip netns` needs root"
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command (iproute2 / util-linux)"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _run("ip", "netns", "delete", probe, check=False)
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces and links of runs whose process is gone; return their names."""
    removed = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NETNS.match(name)
        if match and not _alive(int(match.group(1))):
            _kill_inside(name)
            _run("ip", "netns", "delete", name, check=False)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        match = _LINK.match(name)
        if match and not _alive(int(match.group(1), 16)):
            _run("ip", "link", "delete", name, check=False)
            removed.append(name)
    return removed


def _kill_inside(netns: str) -> None:
    """SIGKILL what still runs in one of this suite's namespaces (a dead run's leftovers)."""
    pids = _run("ip", "netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Host:
    """One namespace: its name, its veth (root side) and its addresses (the first is its own)."""

    name: str
    netns: str
    link: str
    addresses: list[str]
    hostname: str

    @property
    def address(self) -> str:
        return self.addresses[0]


@dataclass
class Network:
    """The bridge, the hosts and the cuts in force; `create` builds it, `destroy` removes it."""

    hosts: dict[str, Host] = field(default_factory=dict)
    bridge: str = ""
    subnet: ipaddress.IPv4Network = field(default=ipaddress.IPv4Network("10.0.0.0/24"))
    cuts: set[tuple[str, str]] = field(default_factory=set)  # (host, address)
    isolated: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, layout: dict[str, int]) -> Network:
        """Build one host per `layout` entry: name -> how many addresses it has."""
        pid = os.getpid()
        net = cls(bridge=f"{PREFIX}{pid:x}-br", subnet=_free_subnet(pid))
        try:
            net._build(layout)
        except BaseException:
            net.destroy()
            raise
        return net

    def _build(self, layout: dict[str, int]) -> None:
        pid = os.getpid()
        gateway = f"{self.subnet[1]}"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        number = 10
        for name, count in layout.items():
            netns = f"{PREFIX}-{pid}-{name}"
            link = f"{PREFIX}{pid:x}-{name}"
            addresses = [str(self.subnet[number + i]) for i in range(count)]
            number += 10
            host = Host(name, netns, link, addresses, hostname=netns)
            self.hosts[name] = host
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _run("ip", "link", "set", link, "master", self.bridge)
            _run("ip", "link", "set", link, "up")
            for address in addresses:
                _run("ip", "-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}",
                     "dev", "eth0")  # fmt: skip
            _run("ip", "-n", netns, "link", "set", "lo", "up")
            _run("ip", "-n", netns, "link", "set", "eth0", "up")
            # The way to nowhere, for the replies of this host's services during a cut.
            ghost = str(self.subnet[GHOST_HOST])
            _run("ip", "-n", netns, "neigh", "replace", ghost, "lladdr", GHOST_MAC,
                 "dev", "eth0", "nud", "permanent")  # fmt: skip
            _run("ip", "-n", netns, "route", "add", str(self.subnet), "via", ghost,
                 "dev", "eth0", "onlink", "table", str(CUT_TABLE))  # fmt: skip

    def destroy(self) -> None:
        """Remove every namespace and link of this network (processes must be gone first)."""
        for host in self.hosts.values():
            _kill_inside(host.netns)
            _run("ip", "netns", "delete", host.netns, check=False)
            _run("ip", "link", "delete", host.link, check=False)
        if self.bridge:
            _run("ip", "link", "delete", self.bridge, check=False)
        self.cuts.clear()
        self.isolated.clear()

    # ------------------------------------------------------------ processes

    def command(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run in `host`'s namespace with its own host name (same pid: all exec)."""
        name = self.hosts[host].hostname
        shell = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.hosts[host].netns,
                "unshare", "--uts", "--", "sh", "-c", shell, name, *argv]  # fmt: skip

    # ------------------------------------------------------------ faults

    def owner_of(self, address: str) -> Host:
        for host in self.hosts.values():
            if address in host.addresses:
                return host
        raise KeyError(address)

    def cut(self, host: str, address: str) -> None:
        """Drop every packet between `host` and one address of another host, both ways."""
        near, far = self.hosts[host], self.owner_of(address)
        _run("ip", "-n", near.netns, "neigh", "replace", address, "lladdr", GHOST_MAC,
             "dev", "eth0", "nud", "permanent")  # fmt: skip
        _run("ip", "-n", far.netns, "rule", "add", "from", address, "to", near.address,
             "lookup", str(CUT_TABLE))  # fmt: skip
        self.cuts.add((host, address))

    def heal(self, host: str, address: str) -> None:
        """Undo `cut`: the address is looked up by ARP again, replies take the main table."""
        near, far = self.hosts[host], self.owner_of(address)
        _run("ip", "-n", near.netns, "neigh", "del", address, "dev", "eth0", check=False)
        _run("ip", "-n", far.netns, "rule", "del", "from", address, "to", near.address,
             "lookup", str(CUT_TABLE), check=False)  # fmt: skip
        self.cuts.discard((host, address))

    def isolate(self, host: str) -> None:
        """Take the host's veth down: it loses every link (and the test's view of it)."""
        _run("ip", "link", "set", self.hosts[host].link, "down")
        self.isolated.add(host)

    def rejoin(self, host: str, timeout: float = 10.0) -> None:
        """Bring the host's veth back up; return once both ends carry traffic again.

        `ip link set up` returns before the link works: the carrier change of both ends, and
        with it the bridge port's move to forwarding, is applied later by the kernel's link
        watch (batched up to a second, later still on a loaded machine). Until then the host
        is still cut off, so a heal that did not wait would count that time as healed.
        """
        link = self.hosts[host].link
        _run("ip", "link", "set", link, "up")
        self.isolated.discard(host)
        deadline = time.monotonic() + timeout
        while not self._carries(host):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{link} not up {timeout:.0f}s after `ip link set up`")
            time.sleep(0.02)
        # What tried to reach the host (or it them) while it was away left ARP entries still
        # resolving, retried once a second: a packet queued behind one waits up to that second
        # (a 1 s connect timeout sees a host still cut). Forget them: the next packet asks at
        # once. Pinned (permanent) entries, a cut's, stay.
        rejoined = self.hosts[host]
        _run("ip", "-n", rejoined.netns, "neigh", "flush", "dev", "eth0")
        for other in self.hosts.values():
            if other is not rejoined:
                _run("ip", "-n", other.netns, "neigh", "flush", "to", rejoined.address)
        _run("ip", "neigh", "flush", "to", rejoined.address, "dev", self.bridge)

    def _carries(self, host: str) -> bool:
        """Both ends of the host's veth up with a carrier, its bridge port forwarding."""
        sysfs = f"/sys/class/net/{self.hosts[host].link}"
        try:
            with open(f"{sysfs}/operstate") as state, open(f"{sysfs}/brport/state") as port:
                near_up = state.read().strip() == "up" and port.read().strip() == "3"
        except OSError:
            return False
        inside = _run("ip", "-n", self.hosts[host].netns, "-o", "link", "show", "eth0")
        return near_up and "state UP" in inside.stdout

    def heal_all(self) -> None:
        """End every cut and isolation in force (a scenario's teardown)."""
        for host, address in list(self.cuts):
            self.heal(host, address)
        for host in list(self.isolated):
            self.rejoin(host)


def _free_subnet(pid: int) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route or address of this machine overlaps."""
    taken = []
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit"):
            word = line.split()[1] if len(line.split()) > 1 else ""
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.IPv4Network(word, strict=False))
    for offset in range(256 * 50):
        value = (pid + offset * 7919) % (256 * 50)
        candidate = ipaddress.IPv4Network(f"10.{200 + value // 256}.{value % 256}.0/24")
        if not any(candidate.overlaps(t) for t in taken if t.prefixlen > 0):
            return candidate
    raise RuntimeError("no free /24 in 10.200.0.0/13 for the test network")
