"""Resident memory of processes under test, read from /proc."""

from __future__ import annotations

import contextlib
from pathlib import Path

from bench.stack import children


def rss_mib(pid: int) -> float:
    """VmRSS of one process in MiB (NaN if it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def largest_child_rss(parent: int) -> float:
    """The largest RSS among a process's children (gunicorn workers, pool children)."""
    values = [rss_mib(pid) for pid in children(parent)]
    values = [v for v in values if v == v]
    return max(values) if values else float("nan")


class Memory:
    """RSS samples taken while processes are still alive, reported together at the end."""

    def __init__(self) -> None:
        self.samples: dict[str, float] = {}

    def child(self, name: str, parent: int) -> None:
        self.samples[name] = largest_child_rss(parent)

    def process(self, name: str, pid: int) -> None:
        self.samples[name] = rss_mib(pid)

    def get(self, name: str) -> float:
        return self.samples.get(name, float("nan"))
