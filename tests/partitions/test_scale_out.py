"""Scale-out: the same fleet with 1, 2 and 3 worker hosts completing the same N tasks.

All hosts share this machine's cores, so this measures what coordination costs as hosts are
added (claims, leases and acks through one Postgres and one Redis), not a speed-up: CPU-bound
work cannot go faster on more namespaces of the same two cores. Tasks that wait (sleeps, as
handlers waiting on I/O do) show what more slots buy. docs/guarantees.md explains the figures.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.partitions.fleet import WORKER_CONCURRENCY, WORKER_HOSTS, Fleet
from tests.partitions.load import PartitionLedger
from tests.partitions.scenario import HEADERS
from tests.partitions.verdicts import SUMMARIES
from tests.reliability.scenario import scaled

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

ECHOES = scaled(300)
SLEEPS = scaled(48)
SLEEP_SECONDS = 0.25


def complete(fleet: Fleet, name: str, definition: str, data: dict[str, object], n: int) -> float:
    """Submit n tasks in bulks of 100; return tasks per second from first submit to last end."""
    ledger = PartitionLedger(name, fleet, HEADERS)
    started = time.time()
    for first in range(0, n, 100):
        items = [
            {"taskDefinitionId": definition, "input": data}
            for _ in range(first, min(n, first + 100))
        ]
        assert len(ledger.submit_bulk(items)) == len(items)
    ledger.settle(timeout=120)
    verdict = ledger.verdict()
    assert not verdict.lost and not verdict.unexpected, verdict.explain()
    assert verdict.counts == {"COMPLETED": n} and verdict.extra_attempts == 0
    return n / (ledger.last_end(list(ledger.tasks)) - started)


def test_throughput_by_worker_host_count(cluster: Fleet) -> None:
    figures: dict[int, tuple[float, float]] = {}
    workers = cluster.of("worker")
    for hosts in (3, 2, 1):
        for service in workers[hosts:]:
            if service.running():  # stop a host: SIGKILL of an idle worker loses nothing
                os.killpg(service.proc.pid, signal.SIGKILL)
                service.proc.wait(10)
        echo = complete(cluster, f"scale-{hosts}", "echo", {"n": 1}, ECHOES)
        sleep = complete(cluster, f"scale-{hosts}", "sleep", {"seconds": SLEEP_SECONDS}, SLEEPS)
        figures[hosts] = (echo, sleep)
    load = os.getloadavg()[0]
    for hosts, (echo, sleep) in sorted(figures.items()):
        line = (
            f"partition scale-out: worker hosts={hosts} slots={hosts * WORKER_CONCURRENCY} "
            f"echo={echo:.0f} tasks/s (x{echo / figures[1][0]:.2f}) "
            f"sleep {SLEEP_SECONDS}s={sleep:.1f} tasks/s (x{sleep / figures[1][1]:.2f}) "
            f"load={load:.1f} cores={os.cpu_count()}"
        )
        print("\n" + line)
        SUMMARIES.append(line)
    # Waiting work scales with slots, since waiting takes no core: three hosts beat one.
    assert figures[3][1] > 1.5 * figures[1][1], figures
    assert len(WORKER_HOSTS) == 3
