"""What every `taskexec` command shares: settings, a ledger connection, the Ctrl-C handler."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import closing, contextmanager

import click
import psycopg2.extensions

from config.settings import ConfigurationError, Settings
from shared import db


def load_settings() -> Settings:
    """Read settings or exit with every problem named."""
    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def ledger(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """One connection in one transaction (committed unless the block raises), always closed."""
    with closing(db.connect(dsn)) as conn, conn:
        yield conn


def restore_sigint() -> None:
    """Make Ctrl-C raise KeyboardInterrupt even if SIGINT was ignored when we started.

    A background job of a non-interactive shell starts with SIGINT ignored, and Python then
    installs no handler: a command that waits for Ctrl-C would never stop on it.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
