"""gunicorn's Date header, formatted once a second by config/gunicorn_worker."""

from __future__ import annotations

import email.utils
import time

from gunicorn import util

import config.gunicorn_worker  # noqa: F401 - installs the per-second Date


def test_the_date_is_the_current_second_in_http_format() -> None:
    for _ in range(3):  # a second may turn between the two reads
        before = email.utils.formatdate(time.time(), usegmt=True)
        got = util.http_date()
        if got == before == email.utils.formatdate(time.time(), usegmt=True):
            return
    raise AssertionError(f"{got!r} is not the current second")


def test_a_given_time_is_formatted_as_before() -> None:
    assert util.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert util.http_date(1_800_000_000.7) == email.utils.formatdate(1_800_000_000.7, usegmt=True)


def test_the_text_follows_the_clock() -> None:
    first = util.http_date()
    time.sleep(1.05)
    assert util.http_date() != first
