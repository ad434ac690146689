"""The Celery settings at-least-once delivery rests on, each with its reason in config/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.celery import celery_settings
from config.settings import Settings
from shared.broker import time_limits
from workers.definitions import DIAGNOSTICS, load_registry

pytestmark = pytest.mark.reliability

SOURCE = Path(__file__).resolve().parents[2] / "config" / "celery.py"
#: The settings issue 7 asks for, and what each must be.
REQUIRED = {
    "task_acks_late": True,  # ack after the attempt is recorded
    "task_reject_on_worker_lost": True,  # a killed child's message is not dropped
    "worker_prefetch_multiplier": 1,
    "task_serializer": "json",
    "accept_content": ["json"],
    "broker_connection_retry": True,
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": None,  # reconnect forever
}
#: The API's ceiling for `executionConfig.timeout` (api/schemas.py), in seconds.
LONGEST_ATTEMPT_SECONDS = 7 * 24 * 3600


def _settings(**overrides: object) -> Settings:
    return Settings(database_url="postgresql://x@h/db", redis_url="redis://h:1/0", **overrides)  # type: ignore[arg-type]


def test_delivery_settings_are_the_at_least_once_ones() -> None:
    conf = celery_settings(_settings())
    assert {key: conf[key] for key in REQUIRED} == REQUIRED
    assert conf["result_accept_content"] == ["json"]


def test_visibility_timeout_exceeds_every_hard_time_limit() -> None:
    settings = _settings()
    visibility = celery_settings(settings)["broker_transport_options"]["visibility_timeout"]
    longest = max(d.timeout_ms for d in load_registry(DIAGNOSTICS))
    _, hard = time_limits(longest, settings.hard_timeout_grace)
    assert visibility > hard, "a built-in definition's attempt outlives the visibility timeout"
    _, hard = time_limits(LONGEST_ATTEMPT_SECONDS * 1000, settings.hard_timeout_grace)
    assert visibility > hard, "the longest attempt the API accepts outlives it"
    # Dead workers must be found by their lease, long before Redis would redeliver.
    assert settings.lease_seconds < visibility


def test_the_api_ceiling_on_attempt_timeouts_is_the_one_assumed_here() -> None:
    from api import schemas

    assert schemas._MAX_TIMEOUT_MS == LONGEST_ATTEMPT_SECONDS * 1000


@pytest.mark.parametrize("enabled", [True, False])
def test_task_events_follow_the_setting(enabled: bool) -> None:
    conf = celery_settings(_settings(worker_events=enabled))
    assert conf["worker_send_task_events"] is enabled


@pytest.mark.parametrize("key", [*REQUIRED, "visibility_timeout", "worker_send_task_events"])
def test_each_setting_states_its_reason(key: str) -> None:
    """Walk up from the key over its sibling entries: a comment must head the group."""
    lines = SOURCE.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if re.match(rf'\s*"{key}":', line))
    while index > 0:
        index -= 1
        line = lines[index].strip()
        if line.startswith("#"):
            return
        if not line.startswith('"'):
            break
    pytest.fail(f"config/celery.py sets {key} without a comment saying why")
