"""Retry policies and their backoff arithmetic, memory quantities, the definition registry."""

from __future__ import annotations

import pytest

from shared.definitions import (
    MAX_RETRY_DELAY_MS,
    Registry,
    RetryPolicy,
    TaskDefinition,
    celery_task_name,
    parse_memory,
)
from shared.status import TaskType

BASE = RetryPolicy(max_retries=3, retry_interval=60_000, backoff_multiplier=2)


def test_from_json_reads_the_seed_form():
    policy = RetryPolicy.from_json(
        {"maxRetries": 3, "retryInterval": 60000, "backoffMultiplier": 2}
    )
    assert policy == BASE
    assert isinstance(policy.backoff_multiplier, float)


def test_absent_fields_fall_back_to_the_base():
    assert RetryPolicy.from_json({}, base=BASE) == BASE
    partial = RetryPolicy.from_json({"maxRetries": 5}, base=BASE)
    assert partial == RetryPolicy(max_retries=5, retry_interval=60_000, backoff_multiplier=2)
    partial = RetryPolicy.from_json({"backoffMultiplier": 1.5, "jitter": 0.1}, base=BASE)
    assert (partial.max_retries, partial.retry_interval) == (3, 60_000)
    assert (partial.backoff_multiplier, partial.jitter) == (1.5, 0.1)


def test_without_a_base_the_class_defaults_apply():
    assert RetryPolicy.from_json({}) == RetryPolicy()
    assert RetryPolicy().max_retries == 0 and RetryPolicy().max_attempts() == 1


def test_to_json_round_trips_and_omits_unset_extras():
    assert BASE.to_json() == {"maxRetries": 3, "retryInterval": 60000, "backoffMultiplier": 2.0}
    full = RetryPolicy(2, 500, 3, retry_on_timeout=True, jitter=0.25)
    assert full.to_json()["retryOnTimeout"] is True
    assert RetryPolicy.from_json(full.to_json()) == full
    assert RetryPolicy.from_json(BASE.to_json()) == BASE


@pytest.mark.parametrize(
    ("failed_attempt", "expected"), [(1, 60_000), (2, 120_000), (3, 240_000), (4, 480_000)]
)
def test_attempt_n_plus_one_waits_interval_times_multiplier_to_the_n_minus_one(
    failed_attempt, expected
):
    assert BASE.delay_ms(failed_attempt) == expected


def test_delay_arithmetic_edge_cases():
    assert RetryPolicy(3, 1000, 1).delay_ms(5) == 1000  # multiplier 1: constant
    assert RetryPolicy(3, 1000, 1.5).delay_ms(3) == 2250
    assert RetryPolicy(3, 333, 1.5).delay_ms(2) == 500  # 499.5 rounds to an integer
    assert RetryPolicy(3, 0, 2).delay_ms(3) == 0
    assert BASE.delay_ms(0) == 60_000  # never below the interval


def test_steep_backoff_is_capped_instead_of_overflowing():
    assert RetryPolicy(100, 7 * 24 * 3600 * 1000, 100).delay_ms(100) == MAX_RETRY_DELAY_MS
    assert RetryPolicy(100, 1000, 1e300).delay_ms(100) == MAX_RETRY_DELAY_MS


def test_max_attempts_counts_the_first_one():
    assert BASE.max_attempts() == 4


@pytest.mark.parametrize(
    ("quantity", "size"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("512Ki", 512 * 1024),
        ("1Ti", 2**40),
        ("1G", 10**9),
        ("250M", 250 * 10**6),
        ("3k", 3000),
        ("2P", 2 * 10**15),
        ("1Ei", 2**60),
        ("512", 512),
        (" 64Mi ", 64 * 2**20),
        ("123456789123456789", 123456789123456789),
    ],
)
def test_parse_memory(quantity, size):
    assert parse_memory(quantity) == size


@pytest.mark.parametrize("bad", ["", "Mi", "128mi", "-1Mi", "1.2.3G", "12 Mi", "ten", "1MB", "1e3"])
def test_parse_memory_rejects_what_is_not_a_quantity(bad):
    with pytest.raises(ValueError, match="not a memory quantity"):
        parse_memory(bad)


def _definition(definition_id: str = "d", **kw: object) -> TaskDefinition:
    return TaskDefinition(
        id=definition_id,
        name="D",
        description="",
        type=TaskType.AUTOMATED,
        version="1.0.0",
        input_schema={"type": "object"},
        output_schema={"type": "object"},
        **kw,  # type: ignore[arg-type]
    )


def test_definition_derived_properties():
    plain = _definition()
    assert plain.memory_limit is None
    assert plain.celery_name == celery_task_name("d") == "taskexec.d"
    assert plain.executor == "standard-executor"
    assert _definition(resource_requirements={"memory": "128Mi"}).memory_limit == 128 * 2**20


def test_registry_refuses_a_duplicate_id():
    registry = Registry([_definition("a"), _definition("b")])
    assert len(registry) == 2
    assert [d.id for d in registry] == ["a", "b"]
    assert registry.get("a") is not None and registry.get("zzz") is None
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(_definition("a"))
