"""Fired tasks' way to Redis: the dispatch window the firer spends, and the publisher thread."""

from __future__ import annotations

import logging
import queue
import threading

from shared import outbox, store
from shared.broker import BROKER_ERRORS, Broker, Rendered
from shared.db import Database
from shared.errors import TaskexecError
from shared.window import Window

log = logging.getLogger(__name__)


class Budget:
    """The dispatch window as the firer spends it: room in Redis, less what its rounds have
    let out and not yet pushed (two rounds run at once; neither may spend the other's room).

    A fired task goes out at once on the same terms as a submission (under no limit, its
    owner with nothing ready waiting, room in its executor's window); the rest waits in
    Postgres for the releaser, which sends it fairly between owners as room opens.
    """

    def __init__(self, window: Window) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._out: dict[str, int] = {}

    def take(self, rows: list[store.SlotRow]) -> set[int]:
        """Let out as many of `rows` as their windows have room for: their id()s."""
        wanted = [r for r in rows if r.may_publish]
        if not wanted:
            return set()
        with self._lock:
            try:
                rooms = self.window.room(r.executor for r in wanted)
            except BROKER_ERRORS:
                # Redis unreachable: as a submission, stamp them; the outbox leaves them to
                # the sweeper when the push fails.
                rooms = {r.executor: len(wanted) for r in wanted}
            allowed = set()
            for row in wanted:
                if rooms[row.executor] - self._out.get(row.executor, 0) > 0:
                    self._out[row.executor] = self._out.get(row.executor, 0) + 1
                    allowed.add(id(row))
            return allowed

    def sent(self, executors: list[str]) -> None:
        """Give back the room of rows let out (their messages pushed now, or not inserted)."""
        with self._lock:
            for executor in executors:
                if executor in self._out:
                    self._out[executor] = max(self._out[executor] - 1, 0)


class Publisher:
    """Publishes fired tasks after their commit, on a thread of its own.

    The next round claims and inserts while this one's messages go out. A task whose message
    is lost (the process dies first, Redis refuses it) is republished by the sweeper, as any
    submission's: the row was stamped published in the firing transaction (the outbox).
    """

    def __init__(self, db: Database, broker: Broker, window: Budget | None = None) -> None:
        self.db = db
        self.broker = broker
        self.window = window
        self._queue: queue.Queue[list[tuple[store.NewTask, Rendered | None]] | None]
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="schedule-publish", daemon=True)
        self._thread.start()

    def put(self, fired: list[tuple[store.NewTask, Rendered | None]]) -> None:
        """Publish these committed tasks (a message rendered ahead, or None to render now)."""
        if fired:
            self._queue.put(fired)

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batches = [self._queue.get()]
            while True:  # everything already waiting goes out in one pipeline
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batches
            fired = [f for b in batches if b is not None for f in b]
            try:
                self._publish(fired)
            except Exception:
                log.exception("publishing %d fired task(s) failed", len(fired))
            finally:
                if self.window is not None:
                    self.window.sent([t.executor for t, _ in fired])

    def _publish(self, fired: list[tuple[store.NewTask, Rendered | None]]) -> None:
        if not fired:
            return
        late = [t for t, message in fired if message is None]
        made = iter(self.broker.render([dispatch_of(t) for t in late]))
        messages = [m if m is not None else next(made) for _, m in fired]
        try:
            self.broker.push(messages)
        except BROKER_ERRORS:
            log.warning("broker unreachable: %d fired task(s) left for the sweeper", len(fired))
            try:  # released for the sweeper's next round (else it republishes them later)
                with self.db.connection() as conn:
                    store.unpublish(conn, [t.id for t, _ in fired])
            except TaskexecError:
                pass


def dispatch_of(task: store.NewTask) -> outbox.Dispatch:
    return outbox.Dispatch(
        task.id, task.task_definition_id, task.executor, task.priority, task.timeout_ms
    )
