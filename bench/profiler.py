"""Sampling profiles with py-spy (raw stacks) and a short summary of where the time goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")

# Where a sample's time goes, judged from the innermost frame that names a known library.
RESOURCES: list[tuple[str, tuple[str, ...]]] = [
    ("Postgres (psycopg2)", ("psycopg2", "shared/store/", "shared/db.py")),
    ("Redis (redis-py, kombu)", ("redis/", "kombu/")),
    ("Celery internals", ("celery/", "billiard/")),
    ("rate limiter", ("flask_limiter/", "limits/")),
    ("validation (marshmallow, jsonschema)", ("marshmallow/", "jsonschema", "referencing/")),
    ("JSON", ("json/",)),
    ("logging", ("logging/",)),
    ("Flask, werkzeug, smorest", ("flask/", "werkzeug/", "flask_smorest/", "webargs/")),
    ("gunicorn", ("gunicorn/",)),
    # Last: a request waiting for another's batch (its own INSERT is matched above).
    ("group commit (waiting for a batch, batching)", ("api/group_commit.py",)),
]
# Library frames worth naming in the inclusive list next to the project's own functions.
LIBRARY_ENTRIES = (
    "psycopg2",
    "Limiter.",
    "send_task",
    "apply_async",
    "Producer.publish",
    "Schema.load",
    "validate (jsonschema",
    "iter_errors",
    "Logger.",
    "dumps (",
    "Request.get_json",
    "trace_task",
)
PROJECT_DIRS = ("api/", "shared/", "workers/", "config/", "bench/")


def available() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start(
    pid: int, seconds: float, out: Path, *, mode: str, subprocesses: bool, rate: int = 200
) -> subprocess.Popen[bytes]:
    """Start py-spy recording `pid` (and its children) into raw collapsed stacks.

    `mode` "wall" samples every thread, waiting or not; "gil" only threads holding the GIL,
    which is Python's CPU time and, unlike py-spy's default, is not fooled by threads that
    are runnable but waiting for a core on a busy machine.
    """
    exe = available()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
    cmd.append("--idle" if mode == "wall" else "--gil")
    if subprocesses:
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Profile:
    """Collapsed stacks (root first) with their sample counts."""

    stacks: list[tuple[list[str], int]]

    @classmethod
    def load(cls, path: Path, focus: Sequence[str] = ()) -> Profile:
        """Read py-spy raw output, keeping stacks that contain one of `focus` (if given)."""
        stacks = []
        for line in path.read_text(errors="replace").splitlines():
            match = _LINE.match(line.strip())
            if not match:
                continue
            frames = [f for f in match.group(1).split(";") if _FRAME_LINE.search(f)]
            if focus and not any(any(x in f for x in focus) for f in frames):
                continue
            stacks.append((frames, int(match.group(2))))
        return cls(stacks)

    @property
    def total(self) -> int:
        """Samples in the profile."""
        return sum(n for _, n in self.stacks)

    def by_resource(self) -> list[tuple[str, float]]:
        """Share of samples per resource, by the innermost frame naming one."""
        counts: Counter[str] = Counter()
        for frames, n in self.stacks:
            counts[_resource(frames)] += n
        total = self.total or 1
        return [(label, n / total) for label, n in counts.most_common()]

    def inclusive(self, limit: int = 15) -> list[tuple[str, float]]:
        """Share of samples that pass through each project function or library entry point."""
        counts: Counter[str] = Counter()
        for frames, n in self.stacks:
            for name in {_strip_line(f) for f in frames}:
                if _interesting(name):
                    counts[name] += n
        total = self.total or 1
        return [(name, n / total) for name, n in counts.most_common(limit)]

    def leaves(self, limit: int = 10) -> list[tuple[str, float]]:
        """Share of samples by innermost frame (self time)."""
        counts: Counter[str] = Counter()
        for frames, n in self.stacks:
            if frames:
                counts[_strip_line(frames[-1])] += n
        total = self.total or 1
        return [(name, n / total) for name, n in counts.most_common(limit)]


def _strip_line(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def _interesting(name: str) -> bool:
    path = name[name.rfind("(") + 1 :]
    return path.startswith(PROJECT_DIRS) or any(entry in name for entry in LIBRARY_ENTRIES)


def _resource(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = frame[frame.rfind("(") + 1 :]
        for label, patterns in RESOURCES:
            if any(p in path for p in patterns):
                return label
        if path.startswith(PROJECT_DIRS):
            return "service code (own frames)"
    return "other (stdlib, sockets, threads)"


def render(title: str, profile: Profile) -> list[str]:
    """Markdown-ish lines summarising a profile."""
    lines = [f"## {title} ({profile.total} samples)"]
    lines.append("by resource (innermost known frame):")
    lines += [f"  {share:6.1%}  {label}" for label, share in profile.by_resource()]
    lines.append("inclusive (project functions and library entry points):")
    lines += [f"  {share:6.1%}  {name}" for name, share in profile.inclusive()]
    lines.append("self (innermost frame):")
    lines += [f"  {share:6.1%}  {name}" for name, share in profile.leaves()]
    return lines
