"""Resource usage of the processes under test, read from /proc: resident memory and CPU time."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bench.stack import children

_TICK = os.sysconf("SC_CLK_TCK")


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


def _cpu(pid: int, reaped: bool) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used = int(fields[11]) + int(fields[12])  # utime, stime
        if reaped:
            used += int(fields[13]) + int(fields[14])  # children it has waited for
        return used / _TICK
    return 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children, live or reaped (a gunicorn or Celery tree)."""
    return _cpu(pid, reaped=True) + sum(_cpu(child, reaped=True) for child in children(pid))


def run_delay_seconds(pid: int) -> float:
    """Time the threads of a process have waited on a run queue for a core (schedstat)."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


class Memory:
    """RSS samples taken while processes are still alive, reported together at the end."""

    def __init__(self) -> None:
        self.samples: dict[str, float] = {}

    def child(self, name: str, parent: int) -> None:
        """Sample the largest child of `parent`."""
        self.samples[name] = largest_child_rss(parent)

    def process(self, name: str, pid: int) -> None:
        """Sample one process."""
        self.samples[name] = rss_mib(pid)

    def get(self, name: str) -> float:
        """A sample in MiB, NaN if it was not taken."""
        return self.samples.get(name, float("nan"))
