"""Group commit: batching, answers per request, and errors that stay with their request."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from api.group_commit import GroupCommit
from shared import store
from shared.errors import ServiceUnavailable

from ..helpers import task_row


def rows(n: int, definition: str = "echo") -> list[store.NewTask]:
    return [task_row(task_definition_id=definition) for _ in range(n)]


class Recorder:
    """A flush that records its batches, can be held, and fails on rows named `bad`."""

    def __init__(self) -> None:
        self.batches: list[list[uuid.UUID]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.outage = False

    def __call__(self, batch: Sequence[store.NewTask]) -> list[Any]:
        self.batches.append([r.id for r in batch])
        self.entered.set()
        assert self.release.wait(10)
        if self.outage:
            raise ServiceUnavailable("the database is unavailable")
        if any(r.task_definition_id == "bad" for r in batch):
            raise ValueError("a row the database refuses")
        # Stored in another order than given: answers must follow ids, not positions.
        return [SimpleNamespace(id=r.id, stored=True) for r in reversed(batch)]


def run(group: GroupCommit, flush: Recorder, mine: list[store.NewTask]) -> Any:
    try:
        return group.submit(mine, flush)
    except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
        return exc


def test_an_idle_server_writes_a_request_at_once_alone() -> None:
    group, flush = GroupCommit(), Recorder()
    mine = rows(3)
    tasks = group.submit(mine, flush)
    assert [t.id for t in tasks] == [r.id for r in mine]
    assert flush.batches == [[r.id for r in mine]]


def test_requests_arriving_during_a_write_share_the_next_one() -> None:
    group, flush = GroupCommit(), Recorder()
    flush.release.clear()
    first = rows(1)
    leader = threading.Thread(target=run, args=(group, flush, first))
    leader.start()
    assert flush.entered.wait(5)

    waiting = [rows(i + 1) for i in range(5)]
    results: dict[int, Any] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, run(group, flush, waiting[i])))
        for i in range(5)
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)  # all five are queued behind the write in progress
    assert len(flush.batches) == 1
    flush.release.set()
    leader.join(5)
    for t in threads:
        t.join(5)

    assert len(flush.batches) == 2
    assert sorted(flush.batches[1]) == sorted(r.id for batch in waiting for r in batch)
    for i, mine in enumerate(waiting):
        assert [t.id for t in results[i]] == [r.id for r in mine]


def test_an_outage_refuses_every_request_of_the_batch() -> None:
    group, flush = GroupCommit(), Recorder()
    flush.outage = True
    with pytest.raises(ServiceUnavailable):
        group.submit(rows(2), flush)
    flush.outage = False
    assert len(group.submit(rows(1), flush)) == 1  # and the next batch goes ahead


def test_a_bad_request_fails_alone_and_its_neighbours_are_written() -> None:
    group, flush = GroupCommit(), Recorder()
    flush.release.clear()
    leader = threading.Thread(target=run, args=(group, flush, rows(1)))
    leader.start()
    assert flush.entered.wait(5)
    good, bad = rows(2), rows(1, definition="bad")
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__("good", run(group, flush, good))),
        threading.Thread(target=lambda: results.__setitem__("bad", run(group, flush, bad))),
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    flush.release.set()
    for t in [leader, *threads]:
        t.join(5)
    assert isinstance(results["bad"], ValueError)
    assert [t.id for t in results["good"]] == [r.id for r in good]
    # The shared write failed, then each request was written alone.
    assert len(flush.batches) == 4


def test_the_next_batch_is_written_while_the_last_one_publishes() -> None:
    group, flush = GroupCommit(), Recorder()
    publishing, release_publish = threading.Event(), threading.Event()
    published: list[list[uuid.UUID]] = []

    first, second = rows(1), rows(2)

    def publish(tasks: Sequence[Any]) -> None:
        if tasks[0].id == first[0].id:  # hold the first batch's publish
            publishing.set()
            assert release_publish.wait(10)
        published.append([t.id for t in tasks])

    results: dict[str, Any] = {}
    leader = threading.Thread(
        target=lambda: results.__setitem__("first", group.submit(first, flush, publish))
    )
    leader.start()
    assert publishing.wait(5)
    # The first batch is committed and publishing: the next request leads its own write now,
    # and the first request has not answered (its batch is not published yet).
    assert [t.id for t in group.submit(second, flush, publish)] == [r.id for r in second]
    assert flush.batches == [[r.id for r in first], [r.id for r in second]]
    assert "first" not in results
    release_publish.set()
    leader.join(5)
    assert [t.id for t in results["first"]] == [r.id for r in first]
    assert sorted(map(sorted, published)) == sorted([[first[0].id], sorted(r.id for r in second)])


def test_a_failed_publish_still_answers_the_committed_rows() -> None:
    group, flush = GroupCommit(), Recorder()

    def publish(tasks: Sequence[Any]) -> None:
        raise RuntimeError("the publish broke")

    mine = rows(2)
    assert [t.id for t in group.submit(mine, flush, publish)] == [r.id for r in mine]
