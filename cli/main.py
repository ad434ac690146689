"""The `taskexec` command: one entry point for running, administering and using the service."""

from __future__ import annotations

import click

from cli import admin, dev, processes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskexec")
def main() -> None:
    """Run and operate taskexec, a distributed task execution service."""


for command in (
    dev.dev,
    processes.api,
    processes.worker,
    processes.beat,
    processes.flower,
    admin.migrate,
    admin.keys,
    admin.token,
):
    main.add_command(command)

try:  # the HTTP client commands (submit, get, cancel, list, definitions)
    from cli import client

    client.register(main)
except ImportError:  # pragma: no cover - a partial install
    pass
