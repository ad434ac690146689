"""The sweeper's schedule thread: claim due schedules, fire each slot once, advance them."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2

from config.settings import Settings
from shared import store
from shared.broker import Broker, Rendered
from shared.db import Database
from shared.errors import TaskexecError
from shared.schedules import (
    SKIP_CATCHUP,
    SKIP_OVERLAP,
    SKIP_TEMPLATE,
    advance,
    next_slot,
    running_limit,
)
from shared.window import Window
from workers.release_wait import ReleaseWait
from workers.schedule_publish import Budget, Publisher, dispatch_of
from workers.schedule_templates import (
    Ahead,
    Template,
    build_template,
    definition_key,
    definition_of,
)

log = logging.getLogger(__name__)
#: Schedules one round claims at most (one transaction); a full batch runs again at once.
SCHEDULE_BATCH = 1000
#: Rounds run at once on their own connections while a backlog lasts.
FIRE_THREADS = 2
#: Templates are built this long before their slot (validated, defaults applied), so the
#: round at the slot only claims, inserts and advances.
PREPARE_AHEAD_SECONDS = 10.0
#: ... unless the slot is closer than this: then its round builds what it needs.
PREPARE_MARGIN_SECONDS = 1.0
#: Schedules prepared ahead at most per look (the rest are built in their round).
PREPARE_LIMIT = 50_000
#: A schedule whose slots cannot be computed at all is looked at again this much later.
RETRY_BROKEN_SECONDS = 60
#: Templates not used for this long (the schedule deleted, say) are dropped.
FORGET_AFTER_SECONDS = 3600.0
#: A due schedule another process holds (a PATCH, another sweeper): look again this soon.
LOCKED_RETRY_SECONDS = 0.1
#: Wake this long after a slot, so the claim finds it due on the database's clock.
RELEASE_SLACK_SECONDS = 0.002
#: A rendered slot due this long without advancing (paused, edited) is left to the claims.
STALE_AHEAD_SECONDS = 2.0
#: Errors of a row's data (not of the connection): a round that meets one is split up.
_ROW_ERRORS = (
    psycopg2.DataError,
    psycopg2.IntegrityError,
    psycopg2.ProgrammingError,
    psycopg2.NotSupportedError,
)


@dataclass(frozen=True)
class _Fire:
    """One claimed schedule's part of a round: its slot rows, its progress, its messages."""

    schedule_id: uuid.UUID
    tasks: list[store.NewTask]
    rows: list[store.SlotRow]
    done: store.Progress
    progress: str
    messages: list[Rendered | None]


class ScheduleFirer:
    """Fires due schedules; several sweepers may run it at once.

    The claim (FOR UPDATE SKIP LOCKED) keeps two sweepers, or a sweeper and a PATCH, off the
    same schedule at once, and the unique (schedule_id, scheduled_for) index makes a slot
    fire at most once even if a claim is lost mid-flight (a sweeper killed after its insert
    committed, say): the slot's second INSERT does nothing. The inserts and the advance of
    next_run_at commit together.
    """

    def __init__(self, db: Database, broker: Broker, settings: Settings | None = None) -> None:
        self.db = db
        self.broker = broker
        self.settings = settings
        # A backlog (10,000 schedules due the same minute) is fired in rounds on several
        # connections at once: the claims' SKIP LOCKED splits it, and Postgres inserts on
        # one core while this process builds the next round on another.
        self._pool = ThreadPoolExecutor(FIRE_THREADS, thread_name_prefix="schedule-round")
        self.templates: dict[uuid.UUID, Template] = {}
        self.window = Budget(Window(settings, broker)) if settings is not None else None
        self.publisher = Publisher(db, broker, self.window)
        self._prepared_at = 0.0
        self._forgot_at = time.monotonic()

    # ------------------------------------------------------------------ the round

    def fire_due(self) -> int:
        """Fire every due slot; return the tasks created.

        FIRE_THREADS rounds at a time, each on its own connection, until a round claims less
        than a full batch: the claims' SKIP LOCKED splits a backlog between them, and while
        Postgres inserts one round this process builds the next. With little due, the second
        claim finds nothing (one short query).
        """
        created = self._fire_rendered()
        drains = [self._pool.submit(self._drain) for _ in range(FIRE_THREADS)]
        return created + sum(d.result() for d in drains)

    def _fire_rendered(self) -> int:
        """Fire the slots rendered ahead that are due, without claiming them first.

        Each statement's advance is its claim (store.fire_rendered): it saves the claim's row
        locks and round trip. What it does not advance (edited, paused, fired by another
        sweeper, not quite due by the database's clock, catching up) keeps its rendering and
        goes to the claimed rounds that follow, which decide on the full plan.
        """
        now = datetime.now(UTC)
        due = [t for t in self.templates.values() if t.ahead is not None and t.ahead.slot <= now]
        if not due:
            return 0
        # A definition released since the rendering: the claimed rounds rebuild on it.
        with self.db.connection(autocommit=True) as conn:
            current = self._definitions(conn, {definition_of(t.schedule) for t in due})
        for template in due:
            if template.definition != definition_key(current[definition_of(template.schedule)]):
                template.ahead = None
        due = [t for t in due if t.ahead is not None]
        due.sort(key=lambda t: t.ahead.slot if t.ahead else now)
        chunks = [due[i : i + SCHEDULE_BATCH] for i in range(0, len(due), SCHEDULE_BATCH)]
        return sum(self._pool.map(self._fire_chunk, chunks))

    def _fire_chunk(self, templates: list[Template]) -> int:
        aheads = [t.ahead for t in templates if t.ahead is not None]
        rows = [a.row for a in aheads]
        allowed = self.window.take(rows) if self.window is not None else None
        try:
            with self.db.connection() as conn:
                outcome = store.fire_rendered(
                    conn,
                    [r.sql(allowed is None or id(r) in allowed) for r in rows],
                    [a.advance for a in aheads],
                )
        except BaseException:
            outcome = None
            raise
        finally:
            if outcome is None and self.window is not None and allowed:
                self.window.sent([r.executor for r in rows if id(r) in allowed])
        if outcome is None:
            # A row held by another transaction (a PATCH, another sweeper's round): nothing
            # was written, and the claimed rounds that follow skip what is held and fire the
            # rest, with these renderings where they still apply.
            return 0
        advanced, inserted = outcome
        stale = datetime.now(UTC) - timedelta(seconds=STALE_AHEAD_SECONDS)
        for template in templates:
            ahead = template.ahead
            if ahead is not None and (template.schedule.id in advanced or ahead.slot < stale):
                # Fired (its id is spent), or long due and still not advanced (paused or
                # edited meanwhile): the claimed rounds decide on the row as it is now.
                template.ahead = None
        if self.window is not None and allowed:  # let out but not stamped: its room back
            self.window.sent(
                [
                    a.row.executor
                    for a in aheads
                    if id(a.row) in allowed and not inserted.get(a.task.id)
                ]
            )
        self.publisher.put([(a.task, a.message) for a in aheads if inserted.get(a.task.id)])
        if inserted:
            log.info("schedules fired %d task(s) rendered ahead, unclaimed", len(inserted))
        return len(inserted)

    def _drain(self) -> int:
        created = 0
        while True:
            claimed, fired = self.fire_round()
            created += fired
            if claimed < SCHEDULE_BATCH:
                return created

    def fire_round(self) -> tuple[int, int]:
        """Fire every due slot of up to SCHEDULE_BATCH schedules: (schedules claimed, tasks
        created).

        The round is two statements whatever its size (the claim; one statement inserting
        every slot's task and advancing every schedule), plus a read of the templates it has
        not prepared, one of the definitions named, one of the active tasks of schedules whose
        overlap policy must look, and a cancel per task CANCEL_PREVIOUS supersedes. Their
        messages go out after the commit, while the next round runs.
        """
        with self.db.connection() as conn:
            due, now = store.claim_due_schedules(conn, SCHEDULE_BATCH)
            if not due:
                return 0, 0
            templates = self._templates(conn, due)
            overlap = [t.schedule.id for t in templates if t.schedule.overlap_policy != "ALLOW"]
            active = store.active_schedule_tasks(conn, overlap)
            fires: list[_Fire] = []
            planned: list[tuple[list[store.SlotTask], store.Progress]] = []
            for claimed, template in zip(due, templates, strict=True):
                ahead = self._ahead(claimed, template, now)
                if ahead is not None:
                    fires.append(
                        _Fire(
                            claimed.id,
                            [ahead.task],
                            [ahead.row],
                            ahead.done,
                            ahead.progress,
                            [ahead.message],
                        )
                    )
                else:
                    planned.append(self._plan(conn, claimed, template, now, active))
            fires += self._render(conn, planned)
            rows = [r for f in fires for r in f.rows]
            allowed = self.window.take(rows) if self.window is not None else None
            try:
                inserted = self._write(conn, fires, allowed)
            except BaseException:
                if self.window is not None and allowed:
                    self.window.sent([r.executor for r in rows if id(r) in allowed])
                raise
        fired = [
            (task, message, row)
            for f in fires
            for task, message, row in zip(f.tasks, f.messages, f.rows, strict=True)
        ]
        if self.window is not None and allowed:  # let out but not stamped: its room back
            self.window.sent(
                [
                    row.executor
                    for t, _, row in fired
                    if id(row) in allowed and not inserted.get(t.id)
                ]
            )
        self.publisher.put([(t, m) for t, m, _ in fired if inserted.get(t.id)])
        if inserted:
            log.info(
                "schedules fired %d task(s), %d rendered ahead",
                len(inserted),
                len(due) - len(planned),
            )
        return len(due), len(inserted)

    @staticmethod
    def _ahead(claimed: store.DueSchedule, template: Template, now: datetime) -> Ahead | None:
        """The slot rendered ahead, if it is exactly what this round must do: the claimed
        schedule waits for that slot, it is the only one due, within the catch-up window."""
        ahead, template.ahead = template.ahead, None  # a slot's id is used once, at most
        if ahead is None or ahead.slot != claimed.next_run_at:
            return None
        if ahead.next_slot is not None and ahead.next_slot <= now:
            return None  # several slots due (catching up): the full plan decides
        catchup = timedelta(milliseconds=template.schedule.catchup_window_ms)
        if ahead.slot < now - catchup:
            return None
        return ahead

    @staticmethod
    def _render(
        conn: store.Conn, planned: list[tuple[list[store.SlotTask], store.Progress]]
    ) -> list[_Fire]:
        rows = iter(store.render_slots(conn, [s for slots, _ in planned for s in slots]))
        progress = store.render_progress(conn, [done for _, done in planned])
        return [
            _Fire(
                done.id,
                [s.task for s in slots],
                [next(rows) for _ in slots],
                done,
                line,
                [None] * len(slots),
            )
            for (slots, done), line in zip(planned, progress, strict=True)
        ]

    def _templates(self, conn: store.Conn, due: list[store.DueSchedule]) -> list[Template]:
        """The template of each claimed schedule: kept ones whose row and definition are
        unchanged, others (re)built."""
        missing = [
            d.id
            for d in due
            if (kept := self.templates.get(d.id)) is None
            or kept.schedule.updated_at != d.updated_at
        ]
        rows = {s.id: s for s in store.get_schedules(conn, missing)} if missing else {}
        definitions = self._definitions(
            conn,
            {
                (rows[d.id] if d.id in rows else self.templates[d.id].schedule).task.get(
                    "taskDefinitionId", ""
                )
                for d in due
            },
        )
        out = []
        stamp = time.monotonic()
        schedules = {d.id: rows.get(d.id) or self.templates[d.id].schedule for d in due}
        limits = self._running_limits(conn, schedules.values())
        for d in due:
            template = self.templates.get(d.id)
            schedule = schedules[d.id]
            definition = definitions.get(schedule.task.get("taskDefinitionId", ""))
            limit = limits[schedule.owner]
            if (
                template is None
                or d.id in rows
                or template.definition != definition_key(definition)
                or template.max_running != limit
            ):
                template = self.templates[d.id] = build_template(schedule, definition, limit)
            template.used = stamp
            out.append(template)
        return out

    def _running_limits(
        self, conn: store.Conn, schedules: Iterable[store.Schedule]
    ) -> dict[str, int | None]:
        """Each owner's per-principal limit, read once per round (a key's change applies from
        the next round: the templates built with another limit are rebuilt)."""
        owners = {s.owner for s in schedules}
        keys = store.owner_running_limits(conn, owners)
        default = self.settings.max_running_per_principal if self.settings else None
        return {owner: running_limit(keys, owner, default) for owner in owners}

    @staticmethod
    def _definitions(conn: store.Conn, ids: set[str]) -> dict[str, store.DefinitionRow | None]:
        return {i: store.get_definition(conn, i) for i in ids}

    def _plan(
        self,
        conn: store.Conn,
        claimed: store.DueSchedule,
        template: Template,
        now: datetime,
        active: dict[uuid.UUID, list[uuid.UUID]],
    ) -> tuple[list[store.SlotTask], store.Progress]:
        """A claimed schedule's slot tasks this round, and its progress.

        Never raises for one schedule's sake: what cannot be computed is recorded as a skip.
        """
        schedule = template.schedule
        try:
            plan = advance(template.timing, claimed.next_run_at, now, schedule.catchup_window_ms)
        except Exception as exc:  # a cron or zone this host no longer reads, say
            log.exception("schedule %s: cannot compute its slots", schedule.id)
            return [], store.Progress(
                schedule.id,
                claimed.updated_at,
                now + timedelta(seconds=RETRY_BROKEN_SECONDS),
                skipped=1,
                last_skipped_at=claimed.next_run_at,
                skip_reason=SKIP_TEMPLATE,
                skip_message=f"cannot compute the slots: {exc!r}",
            )
        skipped, last_skipped = plan.skipped, plan.last_skipped
        reason: tuple[str, str] | None = None
        if skipped:
            reason = (SKIP_CATCHUP, "missed by longer than catchupWindow")
            log.warning(
                "schedule %s skipped %d slot(s) missed by more than its catch-up window"
                " (the last at %s)",
                schedule.id,
                skipped,
                last_skipped.isoformat() if last_skipped else "?",
            )
        fire = plan.fire
        if fire and template.row is None:
            assert template.skip is not None
            reason = template.skip
            log.warning(
                "schedule %s: %d slot(s) skipped: %s", schedule.id, len(fire), template.skip[1]
            )
            skipped, last_skipped, fire = skipped + len(fire), fire[-1], []
        elif fire and schedule.overlap_policy != "ALLOW":
            fire, overlapped = self._make_room(conn, schedule, fire, active.get(schedule.id, []))
            if overlapped:
                skipped, last_skipped = skipped + len(overlapped), overlapped[-1]
                reason = (SKIP_OVERLAP, "the schedule's previous task was still active")
        slots = []
        if template.row is not None:
            slots = [
                store.SlotTask(dataclasses.replace(template.row, id=uuid.uuid4()), schedule.id, s)
                for s in fire
            ]
        return slots, store.Progress(
            schedule.id,
            claimed.updated_at,
            plan.next_run_at,
            last_run_at=fire[-1] if fire else None,
            skipped=skipped,
            last_skipped_at=last_skipped,
            skip_reason=reason[0] if reason else None,
            skip_message=reason[1] if reason else None,
        )

    def _make_room(
        self,
        conn: store.Conn,
        schedule: store.Schedule,
        slots: list[datetime],
        active: list[uuid.UUID],
    ) -> tuple[list[datetime], list[datetime]]:
        """Apply the overlap policy to a round's due slots: (those to fire, those skipped).

        SKIP fires the first slot only if no task of the schedule is active (each fired one
        is active until it ends). CANCEL_PREVIOUS cancels the active ones gracefully and fires
        the last slot only: catching up, each slot would cancel the one before it.
        """
        if schedule.overlap_policy == "SKIP":
            if active:
                log.info("schedule %s: slot(s) skipped, its previous task is active", schedule.id)
                return [], slots
            return slots[:1], slots[1:]
        for task_id in active:  # CANCEL_PREVIOUS: a graceful cancel, as the API's (not forced)
            store.cancel_task(
                conn,
                task_id,
                owner=None,
                reason=f"superseded by the slot {slots[-1].isoformat()} of schedule {schedule.id}",
                by=f"schedule:{schedule.id}",
                force=False,
            )
        return slots[-1:], slots[:-1]

    def _write(
        self, conn: store.Conn, fires: list[_Fire], allowed: set[int] | None
    ) -> dict[uuid.UUID, bool]:
        """Insert the round and advance its schedules; return the tasks inserted (and whether
        each goes out at once). A row the database refuses costs only its own schedule's
        slots (recorded as skipped), never the round or the loop.

        `allowed`: the rows (by id()) the dispatch window lets out at once; None: all.
        """

        def sql(rows: list[store.SlotRow]) -> list[str]:
            return [r.sql(allowed is None or id(r) in allowed) for r in rows]

        try:
            return store.fire_round(
                conn, sql([r for f in fires for r in f.rows]), [f.progress for f in fires]
            )
        except _ROW_ERRORS:
            log.exception("a schedule round was refused; firing its schedules one by one")
        inserted: dict[uuid.UUID, bool] = {}
        for fire in fires:
            try:
                inserted |= store.fire_round(conn, sql(fire.rows), [fire.progress])
            except _ROW_ERRORS as exc:
                log.warning("schedule %s: its task was refused: %s", fire.schedule_id, exc)
                done = fire.done
                refused = dataclasses.replace(
                    done,
                    last_run_at=None,
                    skipped=done.skipped + len(fire.rows),
                    last_skipped_at=done.last_run_at or done.last_skipped_at,
                    skip_reason=SKIP_TEMPLATE,
                    skip_message=f"the database refused its task: {str(exc).strip()}",
                )
                store.fire_round(conn, [], store.render_progress(conn, [refused]))
        return inserted

    # ------------------------------------------------------------- ahead of the slot

    def prepare(self, within: float = PREPARE_AHEAD_SECONDS) -> int:
        """Get the schedules due within `within` seconds ready; return how many were.

        Builds the templates it lacks (validated, defaults applied), then renders each
        ALLOW schedule's next slot (task id, SQL rows, message), so the round at the slot
        only claims, sends one statement and pushes. Reads without a lock: a schedule
        edited or fired meanwhile is caught by the claim (updated_at, next_run_at), and its
        round builds what it needs.
        """
        self._prepared_at = time.monotonic()
        with self.db.connection(autocommit=True) as conn:
            upcoming = store.schedules_due_by(conn, within, PREPARE_LIMIT)
            kept_limits = self._running_limits(
                conn, [t.schedule for u in upcoming if (t := self.templates.get(u.id))]
            )
            missing = [
                u.id
                for u in upcoming
                if (kept := self.templates.get(u.id)) is None
                or kept.schedule.updated_at != u.updated_at
                or kept.max_running != kept_limits[kept.schedule.owner]
            ]
            for start in range(0, len(missing), SCHEDULE_BATCH):
                rows = store.get_schedules(conn, missing[start : start + SCHEDULE_BATCH])
                definitions = self._definitions(
                    conn, {s.task.get("taskDefinitionId", "") for s in rows}
                )
                limits = self._running_limits(conn, rows)
                for schedule in rows:
                    template = build_template(
                        schedule,
                        definitions.get(schedule.task.get("taskDefinitionId", "")),
                        limits[schedule.owner],
                    )
                    template.used = self._prepared_at
                    self.templates[schedule.id] = template
            self._render_ahead(conn, upcoming)
        return len(upcoming)

    def _render_ahead(self, conn: store.Conn, upcoming: list[store.DueSchedule]) -> None:
        wanted: list[tuple[Template, store.SlotTask, store.Progress]] = []
        for u in upcoming:
            template = self.templates.get(u.id)
            if (
                template is None
                or template.row is None
                or template.schedule.updated_at != u.updated_at
                or template.schedule.overlap_policy != "ALLOW"
                or (template.ahead is not None and template.ahead.slot == u.next_run_at)
            ):
                continue
            try:
                following = next_slot(template.timing, u.next_run_at)
            except Exception:
                continue  # its round records why
            task = dataclasses.replace(template.row, id=uuid.uuid4())
            slot = store.SlotTask(task, u.id, u.next_run_at)
            done = store.Progress(u.id, u.updated_at, following, last_run_at=u.next_run_at)
            wanted.append((template, slot, done))
        if not wanted:
            return
        rows = store.render_slots(conn, [slot for _, slot, _ in wanted])
        progress = store.render_progress(conn, [done for _, _, done in wanted])
        advances = store.render_advances(
            conn,
            [
                (done, done.last_run_at, t.schedule.catchup_window_ms)
                for t, _, done in wanted
                if done.last_run_at is not None
            ],
        )
        sent = [slot.task for _, slot, _ in wanted if slot.task.published]
        messages = iter(self.broker.render([dispatch_of(t) for t in sent]))
        for (template, slot, done), row, line, guarded in zip(
            wanted, rows, progress, advances, strict=True
        ):
            message = next(messages) if slot.task.published else None
            assert slot.scheduled_for is not None
            template.ahead = Ahead(
                slot.scheduled_for, done.next_run_at, slot.task, row, done, line, guarded, message
            )

    def forget_unused(self) -> None:
        """Drop templates no round used for a while (deleted or long-paused schedules)."""
        cutoff = time.monotonic() - FORGET_AFTER_SECONDS
        self.templates = {k: t for k, t in self.templates.items() if t.used >= cutoff}
        self._forgot_at = time.monotonic()

    # ------------------------------------------------------------------ the thread

    def next_due_in(self) -> float | None:
        """Seconds until the earliest unpaused schedule is due (<= 0: due now)."""
        with self.db.connection(autocommit=True) as conn:
            return store.next_schedule_in(conn)

    def run_forever(self, stop: threading.Event) -> None:
        """Fire schedules until `stop` is set, on a thread of the sweeper's own.

        Sleeps until the earliest next_run_at (one index entry), woken early by a NOTIFY from
        a created or edited schedule; prepares the templates of what falls due next while it
        waits. Releases, rescues and purges run elsewhere, so they never delay a slot.
        """
        assert self.settings is not None
        interval = self.settings.sweep_interval
        waiter = ReleaseWait(
            self.settings.database_url,
            stop,
            self.settings.db_connect_timeout,
            listen=store.listen_for_schedules,
        )
        try:
            while not stop.is_set():
                wait = interval
                try:
                    waiter.listen()  # before the look-up: an edit after it wakes us
                    self.fire_due()
                    due_in = self.next_due_in()
                    if (
                        due_in is not None
                        and PREPARE_MARGIN_SECONDS < due_in <= PREPARE_AHEAD_SECONDS
                        and time.monotonic() - self._prepared_at > 1
                    ):
                        self.prepare()
                        due_in = self.next_due_in()
                    if due_in is not None and due_in > 0:
                        wait = min(due_in + RELEASE_SLACK_SECONDS, interval)
                    elif due_in is not None:
                        # Due and not claimed: held by a PATCH or another sweeper's round.
                        wait = LOCKED_RETRY_SECONDS
                    if time.monotonic() - self._forgot_at > FORGET_AFTER_SECONDS:
                        self.forget_unused()
                except TaskexecError as exc:
                    log.warning("schedule round skipped: %s", exc.message)
                except Exception:
                    log.exception("schedule round failed")
                if not stop.is_set():
                    waiter.sleep(wait)
        finally:
            waiter.close()
            self._pool.shutdown(wait=False)
            self.publisher.close()
