"""Retry arithmetic: backoff, jitter, submission over definition, timeouts' retryability."""

from __future__ import annotations

import pytest

from shared.definitions import RetryPolicy
from workers.failures import retry_delay_ms


@pytest.mark.parametrize(
    ("interval", "multiplier", "expected"),
    [
        (200, 2, [200, 400, 800, 1600]),
        (60_000, 2, [60_000, 120_000, 240_000, 480_000]),
        (500, 1, [500, 500, 500, 500]),
        (100, 1.5, [100, 150, 225, 338]),  # rounded to the nearest millisecond
        (0, 3, [0, 0, 0, 0]),
    ],
)
def test_attempt_n_plus_1_waits_interval_times_multiplier_to_the_n_minus_1(
    interval, multiplier, expected
):
    policy = RetryPolicy(max_retries=4, retry_interval=interval, backoff_multiplier=multiplier)
    assert [retry_delay_ms(policy, n) for n in (1, 2, 3, 4)] == expected


def test_jitter_only_adds_up_to_its_fraction_of_the_delay():
    policy = RetryPolicy(max_retries=3, retry_interval=1000, backoff_multiplier=2, jitter=0.5)
    assert retry_delay_ms(policy, 2, rand=lambda: 0.0) == 2000
    assert retry_delay_ms(policy, 2, rand=lambda: 0.999) == 2999
    assert retry_delay_ms(policy, 1, rand=lambda: 0.5) == 1250
    no_jitter = RetryPolicy(max_retries=3, retry_interval=1000)
    assert retry_delay_ms(no_jitter, 1, rand=lambda: 0.999) == 1000


def test_submission_values_override_the_definition_and_absent_ones_fall_back():
    definition = RetryPolicy(max_retries=3, retry_interval=200, backoff_multiplier=2)
    merged = RetryPolicy.from_json({"retryInterval": 50}, base=definition)
    assert (merged.max_retries, merged.retry_interval, merged.backoff_multiplier) == (3, 50, 2)
    assert merged.max_attempts() == 4


def test_timeouts_are_not_retried_unless_the_policy_says_so():
    assert RetryPolicy.from_json({"maxRetries": 3}).retry_on_timeout is False
    policy = RetryPolicy.from_json({"maxRetries": 3, "retryOnTimeout": True})
    assert policy.retry_on_timeout is True
    assert policy.to_json()["retryOnTimeout"] is True
    assert "retryOnTimeout" not in RetryPolicy().to_json()
