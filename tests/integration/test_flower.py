"""A real Flower watching a real worker: the worker and a finished task are visible in its API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cli.processes import flower_command, flower_env
from tests.helpers import ROOT, settings_env, wait_for, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CREDENTIALS = ("operator", "flower-test-password")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Flower:
    """A Flower process and an authenticated HTTP session to it."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log = log
        self.http = requests.Session()
        self.http.auth = CREDENTIALS

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(self.url + path, params=params, timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def flower(settings: Any, clean_db: None, tmp_path: Path) -> Iterator[Flower]:
    port = _free_port()
    log = tmp_path / "flower.log"
    env = settings_env(settings)
    env["TASKEXEC_FLOWER_BASIC_AUTH"] = ":".join(CREDENTIALS)
    # `taskexec flower` as the Procfile runs it: it execs Flower with our config file
    # (watch-only, task columns) and the credentials in Flower's own variable.
    cmd = [sys.executable, "-m", "cli", "flower", "--port", str(port), "--address", "127.0.0.1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    flower = Flower(port, proc, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"flower exited:\n{flower.output()}")
        try:
            return flower.get("/healthcheck").status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, timeout=60, interval=0.2)
        yield flower
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)
        flower.http.close()


def test_flower_shows_the_worker_and_the_finished_task_by_our_id(
    flower: Flower, processes: Any, client: Any, auth: Any
) -> None:
    # Task events are off by default (TASKEXEC_WORKER_EVENTS): Flower switches them on in the
    # workers it finds, every few seconds. Tasks that ran before that are not in Flower.
    processes.worker()
    headers = auth.key("*")

    def worker_listed() -> dict[str, Any] | None:
        response = flower.get("/api/workers", refresh="1")
        assert response.status_code == 200, response.text
        return response.json() or None

    workers = wait_for(worker_listed, timeout=30, interval=0.5)
    assert any(name.startswith("w") and "@" in name for name in workers), workers

    def task_seen(task_id: str) -> dict[str, Any] | None:
        response = flower.get("/api/tasks")
        assert response.status_code == 200, response.text
        task = response.json().get(task_id)
        return task if task and task.get("state") == "SUCCESS" else None

    def one_seen() -> tuple[str, dict[str, Any]] | None:
        task_id = client.post(
            "/api/v1/tasks",
            json={"taskDefinitionId": "echo", "input": {"seen": "in flower"}},
            headers=headers,
        ).get_json()["id"]
        done = wait_for_status(client, headers, task_id, {"COMPLETED", "FAILED"})
        assert done["status"] == "COMPLETED"
        try:
            return task_id, wait_for(lambda: task_seen(task_id), timeout=2, interval=0.2)
        except AssertionError:
            return None  # ran before Flower had switched the worker's events on

    try:
        task_id, task = wait_for(one_seen, timeout=40, interval=0.5)
    except AssertionError:
        raise AssertionError(f"no task in Flower; its log:\n{flower.output()}") from None
    assert task["name"] == "taskexec.echo"
    assert task["uuid"] == task_id
    assert "completed" in str(task["result"])  # the worker's outcome, as Flower shows it
    assert task["worker"] in workers


def test_flower_refuses_requests_without_credentials(flower: Flower) -> None:
    for path in ("/api/workers", "/api/tasks", "/"):
        response = requests.get(flower.url + path, timeout=10)
        assert response.status_code == 401, (path, response.status_code)
    wrong = requests.get(flower.url + "/api/tasks", auth=("operator", "wrong"), timeout=10)
    assert wrong.status_code == 401


def test_flower_is_watch_only(flower: Flower) -> None:
    # A revoke from Flower would bypass the ledger; cancels go through the API.
    response = flower.http.post(
        flower.url + "/api/task/revoke/00000000-0000-0000-0000-000000000000"
    )
    assert response.status_code == 403, response.status_code
    assert "read only" in response.text.lower()


@pytest.mark.parametrize(
    ("args", "auth", "message"),
    [
        (["--address", "0.0.0.0"], "", "needs basic auth"),
        ([], "admin:short", "8 or more"),
        ([], "no-colon-here", "user:password"),
    ],
)
def test_taskexec_flower_refuses_unsafe_settings(
    settings: Any, args: list[str], auth: str, message: str
) -> None:
    env = settings_env(settings)
    env["TASKEXEC_FLOWER_BASIC_AUTH"] = auth
    result = subprocess.run(
        [sys.executable, "-m", "cli", "flower", "--port", str(_free_port()), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_flower_command_refuses_an_exposed_unauthenticated_bind() -> None:
    with pytest.raises(ValueError, match="basic auth"):
        flower_command(5555, None, "0.0.0.0")
    assert "--address=127.0.0.1" in flower_command(5555, None)
    assert "FLOWER_BASIC_AUTH" not in flower_env(None)
    assert flower_env(None)["FLOWER_UNAUTHENTICATED_API"] == "false"
    assert not any("secret" in part for part in flower_command(5555, "u:secret-pass"))
    assert sys.executable in flower_command(5555, None)
