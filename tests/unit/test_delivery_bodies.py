"""A delivery body's snapshot is read exactly as json.loads reads it, by the faster reader."""

from __future__ import annotations

import json

import pytest

from workers.delivery_bodies import decode_snapshot

SNAPSHOT = {
    "id": "0fba842d-bfa5-4850-9c2b-a17567fbcffb",
    "status": "COMPLETED",
    "attempts": 1,
    "input": {"n": 12, "ratio": 0.1, "tiny": 1e-7, "text": "caf\u00e9 \u2603", "list": [1, None]},
    "end_time": "2026-12-07T00:39:09.123456+00:00",
}


@pytest.mark.parametrize(
    "value",
    [
        2**63 - 1,
        2**64,  # orjson alone reads this as a float
        -(2**63) - 1,  # and this
        123456789012345678901234567890,
        10**400,  # past a double's range: orjson refuses it
        0.1000000000000000055511151231257827,
        -0.0,
        "a string of 1234567890123456789012 digits",
    ],
)
def test_a_snapshot_reads_as_json_loads_reads_it(value: object) -> None:
    text = json.dumps({**SNAPSHOT, "output": {"value": value}})
    decoded = decode_snapshot(text)
    assert decoded == json.loads(text)
    assert type(decoded["output"]["value"]) is type(json.loads(text)["output"]["value"])


def test_a_common_snapshot_reads_the_same() -> None:
    text = json.dumps(SNAPSHOT)
    assert decode_snapshot(text) == json.loads(text) == SNAPSHOT
