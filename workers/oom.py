"""Whether the kernel's OOM killer ended a worker child: its memory cgroup's oom_kill counter."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def counter_file(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> Path | None:
    """The file holding this process's cgroup `oom_kill` counter, or None where there is none.

    cgroup v2 (`0::/path`) keeps it in `memory.events` (at the root of the mount, or under
    `unified/` on a hybrid host); cgroup v1 in the memory controller's `memory.oom_control`.
    Looked up afresh each time: a process may be moved to another cgroup while it runs.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found: list[Path] = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if hierarchy == "0" and not controllers:
            found += [
                root / relative / "memory.events",
                root / "unified" / relative / "memory.events",
            ]
        elif "memory" in controllers.split(","):
            found.append(root / "memory" / relative / "memory.oom_control")
    return next((f for f in found if f.is_file()), None)


def read_oom_kills(path: Path) -> int | None:
    """The `oom_kill` count in a `memory.events` or `memory.oom_control` file."""
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


class OomKills:
    """Notices the kernel's OOM kills in this process's memory cgroup, between two looks.

    A worker's children share its cgroup, and the kernel counts every process it kills there
    for want of memory (the cgroup's limit, or the whole machine's). The worker's parent looks
    when a child dies of SIGKILL: a count that rose since its last look says the OOM killer
    did it. What it cannot tell apart is in docs/lifecycle.md ("Memory and lost workers").
    """

    def __init__(self, proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> None:
        self._proc_cgroup = proc_cgroup
        self._root = root
        self._seen: dict[Path, int] = {}
        self.rose()  # the baseline: kills before this worker started are not its children's

    def rose(self) -> bool:
        """Say whether the cgroup's OOM kills rose since the last look; this look is the next.

        A cgroup not seen before (the process was moved) has no baseline: it says no.
        """
        path = counter_file(self._proc_cgroup, self._root)
        if path is None:
            return False
        count = read_oom_kills(path)
        if count is None:
            return False
        before = self._seen.get(path)
        self._seen[path] = count
        return before is not None and count > before
