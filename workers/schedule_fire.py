"""The sweeper's schedule round: claim due schedules, fire each slot once, advance them."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from shared import outbox, store
from shared.broker import Broker
from shared.db import Database
from shared.schedules import Timing, advance, template_row

log = logging.getLogger(__name__)
#: Schedules one round claims at most (one transaction); a full batch runs again at once.
SCHEDULE_BATCH = 1000


def timing_of(schedule: store.Schedule) -> Timing:
    """A stored schedule's slot rule."""
    return Timing(
        cron=schedule.cron,
        interval_ms=schedule.interval_ms,
        timezone=schedule.timezone,
        anchor=schedule.start_at or schedule.created_at,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
    )


class ScheduleFirer:
    """Fires due schedules; several sweepers may run it at once.

    The claim (FOR UPDATE SKIP LOCKED) keeps two sweepers off the same schedule, and the
    unique (schedule_id, scheduled_for) index makes a slot fire at most once even if a claim
    is lost mid-flight (a sweeper killed after its insert committed, say): the slot's second
    INSERT does nothing. The insert and the advance of next_run_at commit together.
    """

    def __init__(self, db: Database, broker: Broker) -> None:
        self.db = db
        self.broker = broker
        self.claimed = 0  # schedules the last round claimed (a full batch: go again)

    def fire_due(self) -> int:
        """Fire every due slot of up to SCHEDULE_BATCH schedules; return the tasks created.

        The round is three statements whatever its size (claim, one INSERT of every slot's
        task, one UPDATE advancing every schedule), plus a few per schedule whose overlap
        policy has to look at its previous task.
        """
        with self.db.connection() as conn:
            due, now = store.claim_due_schedules(conn, SCHEDULE_BATCH)
            definitions: dict[str, Any] = {}
            rows: list[dict[str, Any]] = []
            rounds: list[tuple[Any, ...]] = []
            created: list[store.Task] = []
            for schedule in due:
                fired, progress = self._fire(conn, schedule, now, definitions)
                if schedule.overlap_policy == "ALLOW":
                    rows += fired
                else:  # the next slot's overlap check must see this one's task
                    created += store.insert_schedule_tasks(conn, fired)
                rounds.append(progress)
            created += store.insert_schedule_tasks(conn, rows)
            store.record_rounds(conn, rounds)
        self.claimed = len(due)
        dispatches = [outbox.Dispatch.of(t) for t in created if t.published_at is not None]
        outbox.publish(self.broker, self.db, dispatches)
        if created:
            log.info("schedules fired %d task(s)", len(created))
        return len(created)

    def _fire(
        self,
        conn: store.Conn,
        schedule: store.Schedule,
        now: datetime,
        definitions: dict[str, Any],
    ) -> tuple[list[dict[str, Any]], tuple[Any, ...]]:
        """The task rows of a due schedule's slots, and its progress for record_rounds."""
        assert schedule.next_run_at is not None  # the claim reads only scheduled ones
        plan = advance(timing_of(schedule), schedule.next_run_at, now, schedule.catchup_window_ms)
        skipped, last_skipped = plan.skipped, plan.last_skipped
        if skipped:
            log.warning(
                "schedule %s skipped %d slot(s) missed by more than its catch-up window"
                " (the last at %s)",
                schedule.id,
                skipped,
                last_skipped.isoformat() if last_skipped else "?",
            )
        definition_id = schedule.task.get("taskDefinitionId", "")
        if definition_id not in definitions:
            definitions[definition_id] = store.get_definition(conn, definition_id)
        definition = definitions[definition_id]
        if definition is None and plan.fire:
            log.warning("schedule %s: definition %s is gone", schedule.id, definition_id)
        rows: list[dict[str, Any]] = []
        fired_last: datetime | None = None
        for slot in plan.fire:
            if definition is None or not self._make_room(conn, schedule, slot, bool(rows)):
                skipped, last_skipped = skipped + 1, slot
                continue
            rows.append(
                template_row(
                    schedule.task,
                    definition,
                    schedule.owner,
                    schedule_id=schedule.id,
                    scheduled_for=slot,
                )
            )
            fired_last = slot
        if schedule.overlap_policy == "CANCEL_PREVIOUS" and len(rows) > 1:
            # Catching up: each slot would cancel the one before it; only the last one fires.
            skipped, last_skipped = skipped + len(rows) - 1, rows[-2]["scheduled_for"]
            rows = rows[-1:]
        progress = (schedule.id, plan.next_run_at, fired_last, skipped, last_skipped)
        return rows, progress

    def _make_room(
        self, conn: store.Conn, schedule: store.Schedule, slot: datetime, fired_before: bool
    ) -> bool:
        """Apply the overlap policy before firing `slot`; False: do not fire it.

        `fired_before`: an earlier slot of this round fired (its task, not yet inserted, is
        still active).
        """
        if schedule.overlap_policy == "ALLOW":
            return True
        if schedule.overlap_policy == "SKIP" and fired_before:
            return False
        active = [] if fired_before else store.active_tasks_of(conn, schedule.id)
        if not active:
            return True
        if schedule.overlap_policy == "SKIP":
            log.info(
                "schedule %s: slot %s skipped, its previous task is still active",
                schedule.id,
                slot.isoformat(),
            )
            return False
        for task in active:  # CANCEL_PREVIOUS: a graceful cancel, as the API's (not forced)
            store.cancel_task(
                conn,
                task.id,
                owner=None,
                reason=f"superseded by the slot {slot.isoformat()} of schedule {schedule.id}",
                by=f"schedule:{schedule.id}",
                force=False,
            )
        return True
