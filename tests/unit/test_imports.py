"""Direction of imports: config <- shared <- {api, workers, cli}; api and workers stay apart."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Unreachable services: importing must not need them (no side effects beyond the entry points).
DUMMY_ENV = {
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}

WORKER_SIDE = """
import json, sys
import workers.celery_app
print(json.dumps(sorted(sys.modules)))
"""
API_SIDE = """
import json, sys
import api.app
from api.app import create_app
from config.settings import Settings
create_app(Settings.from_env())  # builds the producer-side Celery app too
import api.wsgi
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """Modules each side has loaded, from two fresh interpreters run side by side."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKEXEC_")}
    env.update(DUMMY_ENV, PYTHONPATH=str(ROOT))
    procs = {
        side: subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side, code in (("workers", WORKER_SIDE), ("api", API_SIDE))
    }
    result = {}
    for side, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"importing the {side} side failed:\n{err}"
        result[side] = set(json.loads(out.strip().splitlines()[-1]))
    return result


def _top(modules: set[str], *names: str) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names)


def test_the_worker_does_not_import_flask_or_the_api(loaded):
    modules = loaded["workers"]
    assert "workers.celery_app" in modules  # the import really happened
    assert "flask" not in modules
    assert _top(modules, "flask", "werkzeug", "flask_smorest", "flask_limiter", "api") == []


def test_the_api_does_not_import_workers_or_celery_worker_code(loaded):
    modules = loaded["api"]
    assert "api.app" in modules and "celery" in modules  # it may publish through Celery
    assert _top(modules, "workers") == []
    assert sorted(m for m in modules if m.startswith("celery.worker")) == []


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("config", {"shared", "api", "workers", "cli"}),
        ("shared", {"api", "workers", "cli", "flask"}),
        ("api", {"workers", "cli"}),
        ("workers", {"api", "cli", "flask"}),
    ],
)
def test_no_source_file_imports_against_the_direction(package, forbidden):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports_of(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
