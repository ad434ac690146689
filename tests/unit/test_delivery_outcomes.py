"""The outcome recorder's thread: it writes what is queued and stops when told, at any moment."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from shared import store
from shared.db import Database
from workers.delivery_outcomes import RECORD_LINGER_SECONDS, OutcomeRecorder, Result


class Recorded(OutcomeRecorder):
    """The recorder with its write kept in memory (no database)."""

    def __init__(self) -> None:
        super().__init__(Database("postgresql://nowhere.invalid/none"), None)
        self.written: list[Result] = []

    def record(self, batch: list[Result]) -> None:
        self.written += batch


def _result() -> Result:
    now = datetime.now(UTC)
    item = store.Claimed(
        id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        webhook_id=uuid.uuid4(),
        type="task.completed",
        task_id=uuid.uuid4(),
        attempts=1,
        created_at=now,
        retry_from=None,
        locked_until=now,
        event_created_at=now,
        task=None,
        data={},
        url="http://127.0.0.1:9/",
        secret="whsec_x",
        previous_secret=None,
        previous_secret_expires_at=None,
        disabled=False,
        disabled_reason=None,
        failing_since=None,
    )
    return Result(item, store.Outcome(True, 204, 1, None), None, now)


def test_a_stop_while_a_batch_fills_ends_the_thread_at_once_with_the_batch_written():
    # Stopped within the linger after an outcome (the moment a deliverer stops after its last
    # send): the wake-up the stop sent was cleared by the batch's flush, and the thread waited
    # for another until stop's timeout.
    for _ in range(5):
        recorder = Recorded()
        recorder.start()
        recorder.add(_result())
        time.sleep(RECORD_LINGER_SECONDS / 4)  # the thread is lingering for the batch now
        started = time.monotonic()
        recorder.stop(timeout=5)
        assert time.monotonic() - started < 1.0
        assert recorder._thread is not None and not recorder._thread.is_alive()
        assert len(recorder.written) == 1


def test_outcomes_queued_before_a_stop_are_all_written():
    recorder = Recorded()
    recorder.start()
    for _ in range(3):
        recorder.add(_result())
    time.sleep(RECORD_LINGER_SECONDS * 5)
    recorder.add(_result())
    recorder.stop(timeout=5)
    assert len(recorder.written) == 4
    assert recorder._thread is not None and not recorder._thread.is_alive()


def test_outcomes_that_cannot_be_written_are_counted():
    """A batch whose write fails (Postgres away) is counted, for the unrecorded-outcomes alert:
    its deliveries are sent again at their leases' end, and only the log said so before."""
    from prometheus_client import CollectorRegistry

    from workers.deliverer_metrics import DelivererMetrics

    registry = CollectorRegistry()
    metrics = DelivererMetrics(registry)
    database = Database("postgresql://postgres@127.0.0.1:1/none", connect_timeout=1)
    recorder = OutcomeRecorder(database, None, metrics)
    recorder.record([_result(), _result()])
    recorder.record([_result()])
    assert registry.get_sample_value("taskexec_webhook_outcomes_unrecorded_total") == 3
