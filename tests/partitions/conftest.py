"""Fixtures of the partition suite: the fleet of namespaces, built once, reset per scenario."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.partitions import network
from tests.partitions import verdicts as partition_verdicts
from tests.partitions.fleet import Fleet
from tests.partitions.load import RUNNING
from tests.reliability.scenario import FACTOR


def _interrupted(signum: int, frame: Any) -> None:
    # make's or CI's SIGTERM, like Ctrl-C, must still tear the namespaces down.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The whole fleet on its own network; skipped (with the reason) where none can be made."""
    reason = network.unavailable_reason()
    if reason:
        pytest.skip(f"partition suite needs network namespaces: {reason}")
    network.remove_stale()
    previous = signal.signal(signal.SIGTERM, _interrupted)
    built: Fleet | None = None
    try:
        try:
            built = Fleet.start(tmp_path_factory.mktemp("partitions"))
        except Exception as exc:  # noqa: BLE001 - say why, then fail as the fault suite does
            pytest.fail(f"cannot build the partition fleet: {exc}")
        yield built
    finally:
        if built is not None:
            built.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def cluster(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, healed and emptied for one scenario; every link healed again afterwards."""
    fleet.reset()
    try:
        yield fleet
    finally:
        while RUNNING:  # a failed test may leave its load running
            RUNNING.pop().stop()
        fleet.net.heal_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give soak runs a per-test time limit as many times longer as they are."""
    if FACTOR > 1:
        for item in items:
            if "tests/partitions/" in item.nodeid:
                item.add_marker(pytest.mark.timeout(300 * FACTOR))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat each scenario's one-line summary at the end of the run."""
    if partition_verdicts.SUMMARIES:
        terminalreporter.section("partition figures")
        for line in partition_verdicts.SUMMARIES:
            terminalreporter.write_line(line)
