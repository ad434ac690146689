"""One partition scenario: steady load, a nemesis cutting and healing links, then the verdict."""

from __future__ import annotations

import contextlib
import functools
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from shared.credentials import mint_token
from tests.helpers import JWT_SECRET
from tests.partitions.fleet import API_HOSTS, WORKER_HOSTS, Fleet, connect
from tests.partitions.load import Load, PartitionLedger
from tests.partitions.verdicts import PartitionVerdict, report
from tests.reliability.scenario import FACTOR

HEADERS = {"Authorization": "Bearer " + mint_token(JWT_SECRET, "partitions", ["*"])}
#: How long a cut holds in the short form: longer than the suite's 4 s lease, so a cut worker's
#: attempts are given to others while it cannot say it still runs them.
HOLD = 6.0


@dataclass
class Window:
    """One cut, from cut to heal: the host cut off, on the monotonic and the wall clock."""

    host: str
    began: float
    healed: float
    healed_at: float  # epoch
    task: str = ""  # the task whose handler ran on the host when it was cut, if one was sought


#: A strike cuts, holds, heals and returns its window; the driver records it.
Strike = Callable[[PartitionLedger, random.Random], Window]


def link_cut(
    host: str,
    services: tuple[str, ...],
    hold: float = HOLD,
    under_handler: bool = False,
    past_handover: bool = False,
) -> Strike:
    """Cut `host` from the named servers of the data host ("postgres", "redis") for `hold` s.

    `under_handler`: first wait until a long handler runs on the (worker) host, and cut then.
    `past_handover`: hold the cut until the sweeper has closed that handler's attempt, too.
    """

    def strike(ledger: PartitionLedger, rng: random.Random) -> Window:
        fleet = ledger.fleet
        task = running_long_task_on(ledger, host) if under_handler else ""
        addresses = [fleet.address_of(name) for name in services]
        began, at = time.monotonic(), time.time()
        for address in addresses:
            fleet.net.cut(host, address)
        _hold(ledger, hold, task if past_handover else "")
        for address in addresses:
            fleet.net.heal(host, address)
        return _healed(ledger, f"{host}-{'+'.join(services)}", host, began, at, task)

    return strike


def isolation(
    host: str, hold: float, under_handler: bool = True, past_handover: bool = False
) -> Strike:
    """Take a host off the network entirely (its veth down) for `hold` seconds (as link_cut)."""

    def strike(ledger: PartitionLedger, rng: random.Random) -> Window:
        task = running_long_task_on(ledger, host) if under_handler else ""
        began, at = time.monotonic(), time.time()
        ledger.fleet.net.isolate(host)
        _hold(ledger, hold, task if past_handover else "")
        ledger.fleet.net.rejoin(host)
        return _healed(ledger, f"{host}-isolated", host, began, at, task)

    return strike


#: How much longer than its `hold` a cut meant to outlast the lease waits for the handover.
HANDOVER_WAIT = 20.0


def _hold(ledger: PartitionLedger, hold: float, task: str) -> None:
    """Hold a cut `hold` s, then, for a `task`, until another host has taken it over.

    A cut past the lease means to show the handler's late result refused: healed before the
    sweeper acted (a lease expires 3-4 s into the cut, it acts within 0.3 s, later on a loaded
    machine), the result would be accepted and the scenario would prove nothing. And healed
    between the sweeper's close and the retry's claim, the cut host itself could claim the
    retry (seen once in CI), where the scenario means to show another host running it: so
    the cut holds until the second attempt is claimed, which the cut host cannot do.
    """
    time.sleep(hold)
    if task:
        with contextlib.suppress(AssertionError):  # the test asserts on the handover
            wait_until(functools.partial(taken_over, ledger, task), HANDOVER_WAIT)


def taken_over(ledger: PartitionLedger, task_id: str) -> bool:
    """Whether the task's first attempt is closed and a second one claimed."""
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT bool_or(attempt = 1 AND ended_at IS NOT NULL) AND bool_or(attempt = 2)"
            " FROM task_attempts WHERE task_id = %s",
            (task_id,),
        )
        row = cur.fetchone()
    return bool(row and row[0])


def _healed(
    ledger: PartitionLedger, kind: str, host: str, began: float, at: float, task: str = ""
) -> Window:
    healed, healed_at = time.monotonic(), time.time()
    ledger.cut(kind, at, healed_at, [host] if host in WORKER_HOSTS else [])
    return Window(host, began, healed, healed_at, task)


def running_long_task_on(ledger: PartitionLedger, host: str, seconds: float = 3.0) -> str:
    """Submit long sleeps until one runs on `host`; return its id."""
    hostname = ledger.fleet.hostname(host)
    deadline = time.monotonic() + 60
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            ids = [ledger.submit("sleep", {"seconds": seconds}) for _ in WORKER_HOSTS]
            started = time.monotonic()
            while time.monotonic() - started < seconds / 2:
                cur.execute(
                    "SELECT id FROM tasks WHERE id = ANY(%s) AND status = 'RUNNING'"
                    " AND worker_host = %s LIMIT 1",
                    ([uuid.UUID(i) for i in ids if i], hostname),
                )
                row = cur.fetchone()
                if row:
                    return str(row[0])
                time.sleep(0.05)
    raise AssertionError(f"no long task ever ran on {host}")


#: Celery's line for a delivery whose result the ledger refused (the task moved on).
SUPERSEDED = re.compile(r"\[([0-9a-f-]{36})\] succeeded in [0-9.]+s: 'superseded'")


def superseded_results(fleet: Fleet, marks: dict[str, int]) -> set[str]:
    """Ids of tasks some worker finished but whose result was refused, since `marks`."""
    found: set[str] = set()
    for service in fleet.of("worker"):
        with open(service.log_path, "rb") as log:
            log.seek(marks.get(str(service.log_path), 0))
            found.update(SUPERSEDED.findall(log.read().decode(errors="replace")))
    return found


#: The lines of shared/breaker.py when a process finds a Redis server unreachable, and when
#: its probe finds it back (the text log: `asctime` is local time, to the millisecond).
BREAKER_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) WARNING shared\.breaker\[\d+\] Redis \S+"
    r" (unreachable|reachable again)"
)


def breaker_opened(fleet: Fleet, window: Window) -> float | None:
    """When (monotonic) the API on the cut host found Redis unreachable in `window`: the cut's
    start if its breaker was still open from an earlier cut; None if it never opened."""
    to_monotonic = window.healed - window.healed_at
    cut_at = window.began - to_monotonic
    open_at_cut = False
    for match in BREAKER_LINE.finditer(fleet.service("api", window.host).log()):
        at = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000
        opened = match[3] == "unreachable"
        if at < cut_at:
            open_at_cut = opened
        elif open_at_cut:
            return window.began
        elif opened and at <= window.healed_at:
            return at + to_monotonic
    return window.began if open_at_cut else None


def breaker_figures(ledger: PartitionLedger, windows: list[Window]) -> tuple[float, float] | None:
    """API hosts cut: (seconds from the cut until the host's Redis breaker opened, the slowest
    submit to that host sent from then until the heal); None if no breaker opened."""
    detected: list[float] = []
    slowest = 0.0
    for window in windows:
        if window.host not in API_HOSTS:
            continue
        opened = breaker_opened(ledger.fleet, window)
        if opened is None:
            continue
        detected.append(opened - window.began)
        for at, host, kind, _, took in ledger.api.log:
            if host == window.host and kind == "submit" and opened <= at <= window.healed:
                slowest = max(slowest, took)
    return (max(detected), slowest) if detected else None


def log_marks(fleet: Fleet) -> dict[str, int]:
    return {str(s.log_path): s.log_path.stat().st_size for s in fleet.of("worker")}


def run(
    fleet: Fleet,
    name: str,
    seed: int,
    strike: Strike,
    rounds: int = 1,
    pause: tuple[float, float] = (1.0, 2.0),
    warmup: float = 1.5,
    after: float = 3.0,
) -> tuple[PartitionLedger, PartitionVerdict, list[Window]]:
    """Run the load, strike `rounds` times (soak: FACTOR times more), heal, settle, judge."""
    ledger = PartitionLedger(name, fleet, HEADERS)
    marks = log_marks(fleet)
    rng = random.Random(seed)
    loads = [Load(ledger, random.Random(seed * 100 + n)) for n in range(2)]
    for load in loads:
        load.start()
    windows = []
    try:
        time.sleep(warmup)
        for number in range(rounds * FACTOR):
            if number:
                time.sleep(rng.uniform(*pause))
            windows.append(strike(ledger, rng))
            # Recovery: a task submitted after the heal completes (through either API host).
            ledger.probe(since=windows[-1].healed_at)
        # A cut worker host takes work again once its broker connection carries traffic: what
        # it sent in the cut is retransmitted at exponentially growing intervals, so the next
        # try comes 1-3 s after a 6 s cut's heal, later after a longer one or under load.
        # Keep the load coming until it has run something again (the rejoin verdict).
        for window in windows:
            if window.host in WORKER_HOSTS:
                with contextlib.suppress(AssertionError):  # the test asserts on verdict.rejoin
                    wait_until(functools.partial(rejoined, ledger, window), REJOIN_WAIT)
        time.sleep(after)
    finally:
        for load in loads:
            load.stop()
    # The load cancels only its own tasks: one a window cut a host under must run its course.
    cancelled = [w.task for w in windows if w.task and ledger.tasks[w.task].cancels]
    assert not cancelled, f"the load cancelled the scenario's own task(s) {cancelled}"
    ledger.settle(timeout=120)
    # A refused result is written once the worker's link is back: give the last one a moment.
    for window in windows:
        if window.task and handed_over(ledger, window.task):
            with contextlib.suppress(AssertionError):
                wait_until(lambda t=window.task: t in superseded_results(fleet, marks), 30)
    verdict = judge(ledger, windows, superseded_results(fleet, marks))
    verdict.lingering = lingering_sessions(fleet, max(w.healed_at for w in windows))
    report(verdict)
    return ledger, verdict, windows


#: How long past the settle a transaction open since before the last heal may linger: the
#: server's keepalives (fleet.KEEPALIVES) end the session of a client gone in the cut within
#: about 5 s of it; nothing of the service holds a transaction open for seconds.
LINGER = 15.0


def lingering_sessions(fleet: Fleet, healed_at: float) -> list[str]:
    """Sessions still in a transaction begun before `healed_at` (epoch) after LINGER s more."""
    deadline = time.monotonic() + LINGER
    with contextlib.closing(connect(fleet.settings.database_url)) as conn, conn.cursor() as cur:
        while True:
            found = fleet.lingering(cur, since=healed_at)
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


#: How long the load keeps going for a cut worker host to run something again after its heal.
REJOIN_WAIT = 30.0


def rejoined(ledger: PartitionLedger, window: Window) -> bool:
    return ledger.rejoined(window.host, window.healed_at) is not None


def handed_over(ledger: PartitionLedger, task_id: str) -> bool:
    """Whether the task ran again after its first attempt (given away at its lease)."""
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM task_attempts WHERE task_id = %s", (task_id,))
        row = cur.fetchone()
    return bool(row and row[0] > 1)


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def judge(ledger: PartitionLedger, windows: list[Window], refused: set[str]) -> PartitionVerdict:
    """The fault suite's verdict, plus what only a partition shows."""
    base = ledger.verdict()
    answers: Counter[str] = Counter()
    slowest = 0.0
    for at, host, kind, status, took in ledger.api.log:
        if kind != "submit" or not any(w.began <= at <= w.healed + 1 for w in windows):
            continue
        slowest = max(slowest, took)
        if status != 201:
            answers[f"{host} {status if status > 0 else 'no answer'}"] += 1
    ids = [uuid.UUID(t) for t in ledger.tasks]
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FILTER (WHERE status = 'COMPLETED') -"
            " count(DISTINCT task_id) FILTER (WHERE status = 'COMPLETED')"
            " FROM task_attempts WHERE task_id = ANY(%s)",
            (ids,),
        )
        (doubled,) = cur.fetchone()
    rejoin = []
    for window in windows:
        if window.host in WORKER_HOSTS:
            took = ledger.rejoined(window.host, window.healed_at)
            if took is not None:
                rejoin.append(took)
    # The margin of a handover: when the sweeper closed the cut host's attempt, from the heal
    # (negative: during the cut, as it must be for the host's late result to be refused).
    handed_back = []
    with contextlib.closing(connect(ledger.settings.database_url)) as conn, conn.cursor() as cur:
        for window in windows:
            if window.task:
                cur.execute(
                    "SELECT extract(epoch FROM ended_at) FROM task_attempts"
                    " WHERE task_id = %s AND attempt = 1 AND error ->> 'kind' = 'WORKER_LOST'",
                    (window.task,),
                )
                row = cur.fetchone()
                if row and row[0] is not None:
                    handed_back.append(float(row[0]) - window.healed_at)
    if handed_back:
        base.notes["handed_back"] = f"{max(handed_back):+.1f}s"
    crashed = [f"{s.role}@{s.host}" for s in ledger.fleet.services if not s.running()]
    if crashed:
        base.notes["crashed"] = ",".join(crashed)
    for bulk_outcome, count in sorted(ledger.bulk_items.items()):
        base.notes[f"bulk_{bulk_outcome.lower()}"] = count
    superseded = len(refused & set(ledger.tasks))
    verdict = PartitionVerdict(base, doubled, answers, superseded, rejoin, slowest)
    breaker = breaker_figures(ledger, windows)
    if breaker is not None:
        verdict.breaker_opened, verdict.slowest_after_open = breaker
    return verdict


def answered_during(ledger: PartitionLedger, windows: list[Window], host: str) -> Counter[int]:
    """What one API host answered to submits while a cut was in force."""
    total: Counter[int] = Counter()
    for window in windows:
        total += ledger.answered(host, window.began, window.healed)
    return total
