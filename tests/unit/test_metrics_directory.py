"""The API's multiprocess metrics directory: gunicorn's hooks make, empty and remove it."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import config.gunicorn as hooks
from config import multiproc


def _server(workers: int) -> Any:
    return SimpleNamespace(cfg=SimpleNamespace(workers=workers), log=SimpleNamespace(info=print))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    return monkeypatch


def test_several_workers_get_a_fresh_directory_removed_at_exit(env):
    hooks.on_starting(_server(3))
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert directory.is_dir() and not list(directory.iterdir())
    hooks.on_exit(_server(3))
    assert not directory.exists()


def test_one_worker_counts_in_its_own_memory(env):
    hooks.on_starting(_server(1))
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_a_given_directory_is_emptied_at_start_and_kept(env, tmp_path):
    (tmp_path / "counter_123.db").write_bytes(b"old run")
    env.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    hooks.on_starting(_server(2))
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert not list(tmp_path.glob("*.db"))
    hooks.on_exit(_server(2))
    assert tmp_path.is_dir()


def test_a_shared_directory_is_left_to_whoever_shared_it(env, tmp_path):
    multiproc.share(tmp_path)
    (tmp_path / "counter_123.db").write_bytes(b"a worker's counts")
    env.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    hooks.on_starting(_server(2))
    assert (tmp_path / "counter_123.db").exists()
    assert multiproc.is_shared(str(tmp_path)) and not multiproc.is_shared("")
