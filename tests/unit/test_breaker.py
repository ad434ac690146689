"""The circuit breaker's states on a clock of the test's own: open, cool-offs, one probe, close."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.breaker import (
    FIRST_COOL_OFF,
    MOST_COOL_OFF,
    Breaker,
    CircuitOpen,
    breaker_for,
    is_link_failure,
    keepalive_options,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> Breaker:
    return Breaker("redis:6379", clock=clock)


def unexpected_probe() -> None:
    raise AssertionError("a closed breaker or one cooling off must not probe")


def failing_probe() -> None:
    raise RedisTimeoutError("Timeout reading from socket")


def answering_probe() -> None:
    pass


def start_probe(breaker: Breaker, probe: Callable[[], None]) -> None:
    """A call after the cool-off: it fails fast, and the probe it started runs to its end."""
    probes = breaker.probes
    with pytest.raises(CircuitOpen, match="probing it"):
        breaker.admit(probe)
    assert breaker.probes == probes + 1
    deadline = time.monotonic() + 10
    while breaker.probing:
        assert time.monotonic() < deadline, "the probe never reported"
        time.sleep(0.001)


def test_closed_lets_every_call_through_without_a_probe(breaker: Breaker) -> None:
    for _ in range(3):
        assert breaker.admit(unexpected_probe) == 0
    breaker.check()
    assert not breaker.is_open and breaker.opened == breaker.refused == breaker.probes == 0


def test_a_failure_opens_it_calls_fail_fast_and_a_probe_after_the_cool_off_closes_it(
    breaker: Breaker, clock: Clock
) -> None:
    breaker.failed(RedisTimeoutError("Timeout reading from socket"))
    assert breaker.is_open and breaker.opened == 1
    for _ in range(5):
        with pytest.raises(CircuitOpen, match="next probe in"):
            breaker.admit(unexpected_probe)
        clock.now += FIRST_COOL_OFF / 10
    assert breaker.refused == 5
    with pytest.raises(CircuitOpen):
        breaker.check()

    clock.now += FIRST_COOL_OFF  # past the cool-off: the next call starts a probe
    start_probe(breaker, answering_probe)
    assert not breaker.is_open and breaker.generation == 1
    breaker.check()  # closed: no error
    assert breaker.admit(unexpected_probe) == 1


def test_cool_offs_grow_from_the_first_to_the_cap(breaker: Breaker, clock: Clock) -> None:
    breaker.failed(RedisTimeoutError("t"))
    seen = []
    for _ in range(5):
        opened_at = clock.now
        while True:
            clock.now += 0.125
            try:
                breaker.admit(failing_probe)
            except CircuitOpen as exc:
                if "probing it" in str(exc):
                    seen.append(clock.now - opened_at)
                    break
        while breaker.probing:
            time.sleep(0.001)
    assert seen == [FIRST_COOL_OFF, 1.0, 2.0, MOST_COOL_OFF, MOST_COOL_OFF]
    assert breaker.is_open and breaker.opened == 1 and breaker.probes == 5


def test_one_probe_at_a_time_and_every_caller_fails_fast(breaker: Breaker, clock: Clock) -> None:
    breaker.failed(RedisTimeoutError("t"))
    clock.now += FIRST_COOL_OFF
    probing, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_probe() -> None:
        calls.append("probe")
        probing.set()
        assert release.wait(10)

    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        started = time.monotonic()
        try:
            breaker.admit(slow_probe)
            result = "admitted"
        except CircuitOpen:
            result = "refused"
        with lock:
            outcomes.append(f"{result} {time.monotonic() - started < 1}")

    callers = [threading.Thread(target=call) for _ in range(16)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(10)
    assert probing.wait(10)
    # Nobody waited for the probe, nobody went through, and only one probe runs.
    assert outcomes == ["refused True"] * 16 and calls == ["probe"]
    release.set()
    deadline = time.monotonic() + 10
    while breaker.is_open:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert breaker.admit(unexpected_probe) == 1 and calls == ["probe"]


def test_a_late_failure_of_a_call_from_before_the_recovery_does_not_reopen(
    breaker: Breaker, clock: Clock
) -> None:
    before = breaker.admit(unexpected_probe)  # a call starts, then the link dies
    breaker.failed(RedisTimeoutError("t"), before)
    clock.now += FIRST_COOL_OFF
    start_probe(breaker, answering_probe)  # the probe finds it back
    after = breaker.admit(unexpected_probe)
    assert after == before + 1
    breaker.failed(RedisTimeoutError("late"), before)  # another call from before, late
    assert not breaker.is_open
    breaker.failed(RedisTimeoutError("t"), after)  # a call of the new generation counts
    assert breaker.is_open and breaker.opened == 2


def test_a_failure_while_open_extends_the_cool_off_without_growing_it(
    breaker: Breaker, clock: Clock
) -> None:
    breaker.failed(RedisTimeoutError("t"))
    clock.now += 0.4
    breaker.failed(RedisTimeoutError("t"))  # a call admitted before it opened, timing out now
    clock.now += 0.4  # 0.8 s after opening, 0.4 s after the second failure
    with pytest.raises(CircuitOpen, match="next probe in"):
        breaker.admit(unexpected_probe)
    clock.now += 0.2
    start_probe(breaker, answering_probe)
    assert not breaker.is_open


def test_an_error_reply_to_the_probe_is_an_answer(breaker: Breaker, clock: Clock) -> None:
    def refused_by_server() -> None:
        raise ResponseError("NOAUTH Authentication required.")

    breaker.failed(RedisTimeoutError("t"))
    clock.now += FIRST_COOL_OFF
    start_probe(breaker, refused_by_server)
    assert not breaker.is_open


def test_a_probe_that_breaks_otherwise_frees_the_slot(breaker: Breaker, clock: Clock) -> None:
    def broken() -> None:
        raise KeyboardInterrupt

    breaker.failed(RedisTimeoutError("t"))
    clock.now += FIRST_COOL_OFF
    with pytest.raises(KeyboardInterrupt):
        breaker.run_probe(broken)
    assert breaker.is_open and not breaker.probing
    start_probe(breaker, answering_probe)  # the next caller probes rather than none ever again
    assert not breaker.is_open


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (RedisTimeoutError("Timeout reading from socket"), True),
        (RedisConnectionError("Error 111 connecting"), True),
        (BusyLoadingError("loading"), True),
        (TimeoutError("timed out"), True),
        (ConnectionResetError(104, "reset"), True),
        (AuthenticationError("invalid password"), False),
        (ResponseError("WRONGTYPE"), False),
        (CircuitOpen("not tried"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_errors_say_the_link_is_down(error: BaseException, down: bool) -> None:
    assert is_link_failure(error) is down


def test_one_breaker_per_server_and_process() -> None:
    assert breaker_for("10.0.0.9:6379") is breaker_for("10.0.0.9:6379")
    assert breaker_for("10.0.0.9:6379") is not breaker_for("10.0.0.9:6380")


def test_keepalives_find_a_dead_link_within_the_timeout() -> None:
    options = keepalive_options(3.0)
    assert options[socket.TCP_KEEPIDLE] == 3
    assert options[socket.TCP_KEEPINTVL] == 1 and options[socket.TCP_KEEPCNT] == 3
    assert options[socket.TCP_USER_TIMEOUT] == 3000
    # The rate limiter's half second: never below a second of keepalive idle.
    assert keepalive_options(0.5)[socket.TCP_KEEPIDLE] == 1
    assert keepalive_options(None)[socket.TCP_USER_TIMEOUT] == 1000
