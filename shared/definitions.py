"""Task definitions: metadata plus a handler, the retry policy and its backoff arithmetic."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from config.settings import parse_duration
from shared.status import TaskType

DEFAULT_EXECUTOR = "standard-executor"
MAX_RETRY_DELAY_MS = 7 * 24 * 3600 * 1000  # a week, the longest interval a submission may ask
_RELEASE = re.compile(r"^\d+(?:\.\d+)*")
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_memory(quantity: str) -> int:
    """Turn a Kubernetes memory quantity ('128Mi', '1G', '512') into bytes."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    # Decimal: a float would round large byte counts ("123456789123456789") off.
    return int(Decimal(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how late a failed attempt is tried again."""

    max_retries: int = 0
    retry_interval: int = 1000  # ms before the first retry
    backoff_multiplier: float = 2.0
    retry_on_timeout: bool = False
    jitter: float = 0.0  # fraction of the delay added at random, 0..1

    def delay_ms(self, failed_attempt: int) -> int:
        """Milliseconds to wait before attempt `failed_attempt + 1`."""
        exponent = max(failed_attempt - 1, 0)
        try:
            delay = self.retry_interval * (self.backoff_multiplier**exponent)
        except OverflowError:
            delay = MAX_RETRY_DELAY_MS
        # Capped: a steep backoff must not overflow Postgres' interval type (or wait for ages).
        return int(round(min(delay, MAX_RETRY_DELAY_MS)))

    def max_attempts(self) -> int:
        return self.max_retries + 1

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "maxRetries": self.max_retries,
            "retryInterval": self.retry_interval,
            "backoffMultiplier": self.backoff_multiplier,
        }
        if self.retry_on_timeout:
            doc["retryOnTimeout"] = True
        if self.jitter:
            doc["jitter"] = self.jitter
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any], base: RetryPolicy | None = None) -> RetryPolicy:
        """Read the camelCase form; absent fields fall back to `base`."""
        fallback = base or cls()
        return cls(
            max_retries=int(doc.get("maxRetries", fallback.max_retries)),
            retry_interval=int(doc.get("retryInterval", fallback.retry_interval)),
            backoff_multiplier=float(doc.get("backoffMultiplier", fallback.backoff_multiplier)),
            retry_on_timeout=bool(doc.get("retryOnTimeout", fallback.retry_on_timeout)),
            jitter=float(doc.get("jitter", fallback.jitter)),
        )


class TaskContext(Protocol):
    """What a handler may ask of the attempt that runs it."""

    task_id: str
    attempt: int

    def cancelled(self) -> bool:
        """Say whether a cancel was requested; long handlers poll this."""

    def check_cancelled(self) -> None:
        """Raise TaskCancelled if a cancel was requested."""

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress between 0 and 1."""

    def log(self, message: str, level: str = "INFO") -> None:
        """Append a line to the task's log."""


Handler = Callable[[dict[str, Any], TaskContext], Any]


@dataclass(frozen=True)
class TaskDefinition:
    """A kind of task: its handler and the metadata the API serves."""

    id: str
    name: str
    description: str
    type: TaskType
    version: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    handler: Handler | None = None
    timeout_ms: int = 60_000
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    executor: str = DEFAULT_EXECUTOR
    security_context: dict[str, Any] = field(default_factory=lambda: {"securityLevel": "LOW"})
    resource_requirements: dict[str, Any] = field(default_factory=dict)
    default_config: dict[str, Any] = field(default_factory=dict)
    # How long its finished tasks are kept (30d, 12h, off), over TASKEXEC_RETENTION(_FAILED).
    retention: str | None = None
    # At most this many of its tasks RUNNING at once across the fleet (None: no limit).
    concurrency_limit: int | None = None

    def __post_init__(self) -> None:
        if self.retention is not None:
            parse_duration(self.retention)  # a typo fails at registration, not at purge time
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError(f"{self.id}: concurrency_limit must be at least 1")

    @property
    def celery_name(self) -> str:
        """The Celery task name; readable in Flower."""
        return celery_task_name(self.id)

    @property
    def memory_limit(self) -> int | None:
        memory = self.resource_requirements.get("memory")
        return parse_memory(memory) if memory else None

    def to_row(self) -> dict[str, Any]:
        """The stored form of the definition: its row's columns (and its history document)."""
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "type": self.type.value,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "timeout_ms": self.timeout_ms,
            "retry_policy": self.retry_policy.to_json(),
            "executor": self.executor,
            "security_context": self.security_context,
            "resource_requirements": self.resource_requirements,
            "default_config": self.default_config,
            "retention": self.retention,
            "concurrency_limit": self.concurrency_limit,
        }


def precedes(version: str, than: str) -> bool:
    """Say whether release `version` precedes `than` (dotted numbers; otherwise never)."""
    mine, theirs = _RELEASE.match(version.strip()), _RELEASE.match(than.strip())
    if mine is None or theirs is None:
        return False
    return tuple(map(int, mine.group().split("."))) < tuple(map(int, theirs.group().split(".")))


def celery_task_name(definition_id: str) -> str:
    """Name the Celery task that runs a definition."""
    return f"taskexec.{definition_id}"


class Registry:
    """The definitions one worker process knows, by id."""

    def __init__(self, definitions: Iterable[TaskDefinition] = ()) -> None:
        self._by_id: dict[str, TaskDefinition] = {}
        for definition in definitions:
            self.add(definition)

    def add(self, definition: TaskDefinition) -> TaskDefinition:
        if definition.id in self._by_id:
            raise ValueError(f"definition {definition.id!r} registered twice")
        self._by_id[definition.id] = definition
        return definition

    def get(self, definition_id: str) -> TaskDefinition | None:
        return self._by_id.get(definition_id)

    def __iter__(self) -> Iterator[TaskDefinition]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
