"""A client generated from the live OpenAPI document (openapi-python-client) runs a task."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.integration.live_api import gunicorn

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PACKAGE = "taskexec_generated_client"


def generate_client(document_url: str, out_dir: Path) -> None:
    """Generate a client package from the document; any generator warning fails the test."""
    document = out_dir / "openapi.json"
    document.write_text(requests.get(document_url, timeout=30).text)
    env = dict(os.environ)
    # The generator runs `ruff` on its output: the virtualenv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(out_dir / PACKAGE),
            "--meta",
            "none",
            "--fail-on-warning",
        ],
        cwd=out_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Path]:
    """A directory for the generated package; its modules are unloaded afterwards."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def _poll(read: Any, done: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout}s"
        time.sleep(0.1)


def test_a_generated_client_submits_and_reads_a_task(
    settings, auth, processes, generated: Path
) -> None:
    processes.worker()
    key = auth.key("*")["X-API-Key"]
    with gunicorn(settings, generated) as url:
        generate_client(f"{url}/api/v1/openapi.json", generated)
        client_module = _module("client")
        models = _module("models")
        submit_task = _module("api.tasks.submit_task")
        get_task = _module("api.tasks.get_task")
        list_tasks = _module("api.tasks.list_tasks")
        get_definition = _module("api.definitions.get_definition")
        submit_job = _module("api.task_apis.submit_job")
        get_job = _module("api.task_apis.get_job")

        client = client_module.AuthenticatedClient(
            base_url=url, token=key, prefix="", auth_header_name="X-API-Key"
        )
        with client:
            body = models.SubmitTask(
                task_definition_id="echo",
                workflow_instance_id="wf-generated",
                input_=models.SubmitTaskInput.from_dict({"greeting": "hello", "n": [1, 2]}),
                priority=models.SubmitTaskPriority.HIGH,
            )
            response = submit_task.sync_detailed(client=client, body=body)
            assert response.status_code == 201, response.content
            created = response.parsed
            assert isinstance(created, models.TaskCreated)
            assert created.status == models.TaskCreatedStatus.PENDING
            assert response.headers["Location"].endswith(f"/api/v1/tasks/{created.id}")

            task = _poll(
                lambda: get_task.sync(task_id=str(created.id), client=client),
                lambda t: isinstance(t, models.Task) and t.status.value in ("COMPLETED", "FAILED"),
            )
            assert task.status == models.TaskStatus.COMPLETED, task
            assert task.output == {"greeting": "hello", "n": [1, 2]}
            assert task.input_.to_dict() == {"greeting": "hello", "n": [1, 2]}
            assert task.priority == models.TaskPriority.HIGH
            assert task.error is None
            assert task.execution_metadata.attempts == 1
            assert task.execution_metadata.end_time >= task.execution_metadata.start_time
            assert [a.status for a in task.attempts] == ["COMPLETED"]

            page = list_tasks.sync(client=client, workflow_instance_id="wf-generated")
            assert isinstance(page, models.TaskList)
            assert [t.id for t in page.items] == [created.id]
            assert page.pagination.total_items == 1

            definition = get_definition.sync(definition_id="echo", client=client)
            assert isinstance(definition, models.Definition)
            assert definition.id == "echo" and definition.version in definition.versions

            # Errors come back as the typed envelope.
            missing = get_task.sync(task_id="00000000-0000-0000-0000-000000000000", client=client)
            assert isinstance(missing, models.Error)
            assert missing.error.code == models.ErrorBodyCode.NOT_FOUND

            # The Cortex-compatible surface too.
            job = submit_job.sync(
                api_name="echo",
                client=client,
                body=models.SubmitJob(config=models.SubmitJobConfigType0.from_dict({"x": 1})),
            )
            assert isinstance(job, models.JobSubmitted) and job.api_name == "echo"
            status = _poll(
                lambda: get_job.sync(api_name="echo", job_id=str(job.job_id), client=client),
                lambda r: r.job_status.status.value == "status_succeeded",
            )
            assert isinstance(status, models.JobResponse)
            assert status.job_status.config.to_dict() == {"x": 1}
        # The package really is the generated one, importable from the test's directory.
        assert Path(client_module.__file__).is_relative_to(generated)
