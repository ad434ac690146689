"""Per-attempt resource limits inside a worker child: a memory ceiling via RLIMIT_DATA."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager


def data_segment_bytes() -> int:
    """Return this process's current data size (VmData), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def memory_limit(limit_bytes: int | None) -> Iterator[None]:
    """Let the block allocate at most `limit_bytes` more; beyond that, MemoryError.

    RLIMIT_DATA (Linux >= 4.7) counts heap and private anonymous mappings but not thread
    stacks or shared libraries, so the ceiling tracks what a handler itself allocates.
    """
    if not limit_bytes:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    ceiling = data_segment_bytes() + limit_bytes
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
