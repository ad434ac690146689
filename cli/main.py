"""The `taskexec` command: one entry point for running, administering and using the service."""

from __future__ import annotations

import click

from cli import admin, client, dev, processes


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

client.register(main)  # the HTTP client commands: submit, get, cancel, delete, list, definitions
