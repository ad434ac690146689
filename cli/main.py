"""The `taskexec` command: one entry point for running, administering and using the service."""

from __future__ import annotations

import click

from cli import admin, client, dev, processes, queues, replay, schedules, webhooks


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taskexec")
def main() -> None:
    """Run and operate taskexec, a distributed task execution service."""


for command in (
    # running the service
    dev.dev,
    processes.api,
    processes.worker,
    processes.sweeper,
    processes.deliverer,
    processes.beat,  # hidden: the sweeper's old name
    processes.flower,
    # administering it, straight in Postgres
    admin.migrate,
    admin.keys,
    admin.token,
    # using it over HTTP
    client.submit,
    client.get,
    client.logs,
    client.cancel,
    replay.retry,
    client.complete,
    client.delete,
    client.list_tasks,
    client.definitions,
    schedules.schedules,
    queues.queues,
    webhooks.webhooks,
):
    main.add_command(command)
