"""The embedded PostgreSQL (tests' and `taskexec dev`'s) is as durable as a real server."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import psycopg2
import pytest

from cli.servers import PostgresServer

pytestmark = pytest.mark.integration


def test_the_private_server_waits_for_the_disk_as_a_real_one_does(tmp_path: Path) -> None:
    # The code's guarantees (a finish is on disk before the broker hears of it) and the tests
    # that check them assume these; they must not hold only where a shared server runs.
    with PostgresServer(tmp_path / "pg") as pg, closing(psycopg2.connect(pg.url)) as conn:
        with conn.cursor() as cur:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                cur.execute(f"SHOW {setting}")
                assert cur.fetchone() == ("on",), setting
