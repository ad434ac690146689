"""The task log context: JSON lines carry task id, definition, attempt, worker while a task runs."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from config.logging import JsonFormatter
from workers import log_context
from workers.log_context import TaskContextFilter, install, task_log_context


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose handler writes JSON lines to a buffer, with the filter installed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.log_context.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    install(logger)
    yield logger, stream
    logger.handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_records_inside_carry_the_context_and_outside_do_not(captured):
    logger, stream = captured
    logger.info("before")
    with task_log_context(task_id="t-1", definition="echo", attempt=2, worker="w1@host"):
        logger.info("during")
        logging.getLogger(logger.name + ".child").warning("from a child logger")
    logger.info("after")
    before, during, child, after = lines(stream)
    for record in (before, after):
        assert not {"task_id", "definition", "attempt", "worker"} & set(record)
    for record in (during, child):
        assert record["task_id"] == "t-1"
        assert record["definition"] == "echo"
        assert record["attempt"] == 2
        assert record["worker"] == "w1@host"


def test_nested_contexts_merge_and_restore(captured):
    logger, stream = captured
    with task_log_context(task_id="t-2", definition="flaky", worker="w@h"):
        logger.info("claiming")
        with task_log_context(attempt=3):
            logger.info("running")
        logger.info("recorded")
    claiming, running, recorded = lines(stream)
    assert "attempt" not in claiming and "attempt" not in recorded
    assert running["attempt"] == 3 and running["task_id"] == "t-2"
    assert recorded["definition"] == "flaky"


def test_explicit_extra_wins_and_does_not_clash(captured):
    logger, stream = captured
    with task_log_context(task_id="t-3", definition="echo"):
        logger.info("explicit", extra={"task_id": "other"})
    (record,) = lines(stream)
    assert record["task_id"] == "other"
    assert record["definition"] == "echo"


def test_a_thread_the_attempt_starts_falls_back_to_the_one_running_attempt(captured):
    logger, stream = captured
    with task_log_context(task_id="t-4", definition="sleep", attempt=1):
        watcher = threading.Thread(target=lambda: logger.info("lease renewed"))
        watcher.start()
        watcher.join()
    (record,) = lines(stream)
    assert record["task_id"] == "t-4"


def test_with_two_attempts_running_a_stray_thread_gets_no_context(captured):
    logger, stream = captured
    inside = threading.Barrier(3)
    leave = threading.Event()

    def attempt(task_id: str) -> None:
        with task_log_context(task_id=task_id, definition="echo"):
            logger.info("own line")
            inside.wait(5)
            leave.wait(5)

    threads = [threading.Thread(target=attempt, args=(t,)) for t in ("a", "b")]
    for thread in threads:
        thread.start()
    inside.wait(5)
    logger.info("stray line")
    leave.set()
    for thread in threads:
        thread.join()
    records = lines(stream)
    stray = [r for r in records if r["message"] == "stray line"]
    own = [r for r in records if r["message"] == "own line"]
    assert "task_id" not in stray[0]  # ambiguous: no guess
    assert sorted(r["task_id"] for r in own) == ["a", "b"]  # each thread its own


def test_context_is_empty_after_every_exit_even_on_error():
    with pytest.raises(RuntimeError):
        with task_log_context(task_id="t-5"):
            raise RuntimeError("handler bug")
    assert log_context.current() == {}


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="colour"):
        with task_log_context(colour="blue"):
            pass


def test_install_puts_one_filter_per_handler(captured):
    logger, _ = captured
    install(logger)
    install(logger)
    handler = logger.handlers[0]  # the fixture's own (pytest may add capture handlers)
    assert sum(isinstance(f, TaskContextFilter) for f in handler.filters) == 1


def test_text_format_is_unchanged_by_the_filter(captured):
    logger, stream = captured
    logger.handlers[0].setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    with task_log_context(task_id="t-6"):
        logger.info("plain")
    assert stream.getvalue() == "INFO plain\n"
