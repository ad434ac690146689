"""Fixtures of the fault suite: private servers it may kill, and one cluster per scenario."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from shared import store
from shared.credentials import mint_token
from tests.helpers import JWT_SECRET, unavailable
from tests.reliability import nemesis, poison
from tests.reliability import verdict as verdict_module
from tests.reliability.cluster import DEFINITION_MODULE, Cluster, Servers
from tests.reliability.scenario import FACTOR, Scenario


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Postgres and Redis of the suite's own, on free ports: never the shared ones."""
    found = Servers(tmp_path_factory.mktemp("reliability-servers"))
    try:
        found.start()
        with contextlib.closing(psycopg2.connect(found.database_url)) as conn, conn:
            store.publish_definitions(conn, poison.DEFINITIONS)
    except Exception as exc:  # noqa: BLE001 - any failure to provide the servers
        found.stop()
        unavailable(f"cannot start private Postgres/Redis: {exc}")
    yield found
    found.stop()


@pytest.fixture
def scenario(servers: Servers, tmp_path: Path) -> Iterator[Scenario]:
    """A fresh ledger and broker, the API in-process, and a cluster stopped afterwards."""
    from api.app import create_app

    servers.reset()
    settings = servers.settings()
    app = create_app(settings)
    app.config["TESTING"] = True
    extra_env = {
        "TASKEXEC_MAX_WORKER_LOST": str(settings.max_worker_lost),
        "TASKEXEC_DEFINITION_MODULES": DEFINITION_MODULE,
        "TASKEXEC_DB_CONNECT_TIMEOUT": str(settings.db_connect_timeout),
    }
    cluster = Cluster(settings, tmp_path, extra_env)
    headers = {"Authorization": "Bearer " + mint_token(JWT_SECRET, "reliability", ["*"])}
    try:
        yield Scenario(servers, settings, app, cluster, headers)
    finally:
        while nemesis.RUNNING:  # a failed test may leave its nemesis striking
            nemesis.RUNNING.pop().stop()
        cluster.stop_all()
        app.extensions["taskexec"].db.close()
        servers.ensure_running()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give soak runs a per-test time limit as many times longer as they are."""
    if FACTOR > 1:
        for item in items:
            if item.get_closest_marker("reliability"):
                item.add_marker(pytest.mark.timeout(300 * FACTOR))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat each scenario's one-line summary at the end of the run."""
    if verdict_module.SUMMARIES:
        terminalreporter.section("reliability figures")
        for line in verdict_module.SUMMARIES:
            terminalreporter.write_line(line)
