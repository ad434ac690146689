"""Retention: how long a finished task is kept, from the settings and its definition's override."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from config.settings import Settings, parse_duration
from shared.status import TERMINAL, Status

#: The terminal statuses TASKEXEC_RETENTION_FAILED covers; COMPLETED and CANCELLED take
#: TASKEXEC_RETENTION (a cancel is a decision someone made, not a failure to investigate).
FAILURES = frozenset({Status.FAILED, Status.TIMED_OUT})


@dataclass(frozen=True)
class RetentionClass:
    """The tasks of one definition in one terminal status, and the seconds they are kept."""

    definition_id: str
    status: str
    seconds: float


@dataclass(frozen=True)
class Retention:
    """Seconds a finished task is kept, per status; None keeps it forever (`off`)."""

    default: float | None
    failed: float | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        default = parse_duration(settings.retention)
        failed = parse_duration(settings.retention_failed) if settings.retention_failed else default
        return cls(default, failed)

    def seconds(self, status: Status | str, override: str | None = None) -> float | None:
        """Seconds a task ending in `status` is kept; a definition's `override` wins."""
        if override:
            return parse_duration(override)
        return self.failed if Status(status) in FAILURES else self.default

    def expires_at(
        self, status: Status | str, end_time: datetime | None, pinned: bool, override: str | None
    ) -> datetime | None:
        """When a task becomes eligible for deletion; None while active, pinned or kept forever."""
        if end_time is None or pinned or Status(status) not in TERMINAL:
            return None
        seconds = self.seconds(status, override)
        return None if seconds is None else end_time + timedelta(seconds=seconds)

    def classes(self, overrides: Mapping[str, str | None]) -> Iterable[RetentionClass]:
        """One class per (definition, terminal status) whose tasks expire at all."""
        for definition_id, override in sorted(overrides.items()):
            for status in sorted(TERMINAL):
                seconds = self.seconds(status, override)
                if seconds is not None:
                    yield RetentionClass(definition_id, status.value, seconds)
