"""Polling the API until something finishes: live status lines, and a task's log as it grows."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import quote

import click

from cli.base import restore_sigint
from cli.output import Printer
from cli.session import ApiFailure, Client

#: Log lines per request: the API's maximum, so a long log takes few round trips.
LOG_PAGE = 1000


def watch(
    fetch: Callable[[], dict[str, Any]],
    state: Callable[[dict[str, Any]], tuple[str, bool]],
    printer: Printer,
    interval: float,
) -> dict[str, Any]:
    """Poll until `state` says done, showing live status; return the last document.

    Ctrl-C ends the command with 130 and leaves the task running.
    """
    stream = sys.stderr if printer.json else sys.stdout  # keep JSON stdout parseable
    live = stream.isatty()
    restore_sigint()
    try:
        return _poll(fetch, state, stream, live, interval)
    except KeyboardInterrupt:
        if live:
            stream.write("\n")
        click.echo("interrupted; the task was not cancelled", err=True)
        raise click.exceptions.Exit(130) from None


def _fetch(fetch: Callable[[], dict[str, Any]], interval: float) -> dict[str, Any]:
    """One poll; a 429 waits as long as the API says and tries again."""
    while True:
        try:
            return fetch()
        except ApiFailure as exc:
            if exc.status != 429:
                raise
            time.sleep(max(exc.retry_after, interval))


def _poll(
    fetch: Callable[[], dict[str, Any]],
    state: Callable[[dict[str, Any]], tuple[str, bool]],
    stream: TextIO,
    live: bool,
    interval: float,
) -> dict[str, Any]:
    started, last, frame = time.monotonic(), None, 0
    while True:
        doc = _fetch(fetch, interval)
        label, done = state(doc)
        if live:  # one line, rewritten in place
            spinner = "|/-\\"[frame % 4] if not done else "*"
            stream.write(f"\r\x1b[K{spinner} {label}  {time.monotonic() - started:5.1f}s")
            if done:
                stream.write("\n")
            stream.flush()
            frame += 1
        elif label != last:  # logs and pipes: a line per change
            stream.write(f"{time.strftime('%H:%M:%S')} {label}\n")
            stream.flush()
        last = label
        if done:
            return doc
        time.sleep(interval)


def print_logs(
    client: Client, printer: Printer, task_id: str, follow: bool, interval: float
) -> None:
    """Print a task's log lines, oldest first; with `follow`, until the task has finished.

    Without `follow` it stops at the end of what is logged so far. Ctrl-C ends it with 130.
    """
    path = f"/api/v1/tasks/{quote(task_id, safe='')}/logs"
    restore_sigint()
    after = 0
    try:
        while True:
            query = {"after": after, "limit": LOG_PAGE}
            page = _fetch(functools.partial(client.call, "GET", path, params=query), interval)
            for line in page["items"]:
                printer.log_line(line)
            if page["nextAfter"] is None:  # the task has finished and every line was read
                return
            after = page["nextAfter"]
            if len(page["items"]) < LOG_PAGE:  # caught up with the task
                if not follow:
                    return
                time.sleep(interval)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
