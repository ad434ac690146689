"""A process that keeps a share of a core busy with deliverer-like work, for bench/webhooks.py.

Run: `python bench/cpu_burner.py CORES`: JSON encoding and decoding, HMAC-SHA256 of the result,
in bursts of about 2 ms, paced to use CORES of CPU (0.25: a quarter of one core) until killed.
It stands for any work beside the task path: the bench puts it under SCHED_IDLE, where it
never holds a core a task-path process wants, to ask whether the tasks slow down all the same.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time

BURST_SECONDS = 0.002


def main() -> None:
    cores = float(sys.argv[1])
    document = {"id": "x" * 36, "input": {"n": list(range(40))}, "output": {"s": "y" * 400}}
    key = b"k" * 32
    while True:
        started = time.thread_time()
        wall = time.monotonic()
        while time.thread_time() - started < BURST_SECONDS:
            body = json.dumps(document).encode()
            hmac.new(key, body, hashlib.sha256).digest()
            json.loads(body)
        # Idle long enough that the bursts add up to `cores` of one CPU over time.
        time.sleep(max(0.0, BURST_SECONDS / cores - (time.monotonic() - wall)))


if __name__ == "__main__":
    main()
