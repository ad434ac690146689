"""`taskexec keys create/list/revoke` and `taskexec token`, run as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from api.app import create_app
from shared.credentials import key_id_of
from tests.helpers import ROOT, settings_env

pytestmark = pytest.mark.integration

PATH = "/api/v1/tasks/definitions"


@pytest.fixture
def settings(base_settings):
    return base_settings.with_overrides(ratelimit_enabled=True)


@pytest.fixture
def taskexec(settings, clean_db):
    """Run `taskexec ARGS...` against the test database; return the completed process."""

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=settings_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    return run


def create(taskexec: Any, *extra: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    done = taskexec("keys", "create", "--name", "billing-svc", *extra)
    secret = done.stdout.strip().splitlines()[-1]
    return secret, done


def test_create_use_list_and_revoke_a_key(taskexec, client):
    secret, done = create(
        taskexec,
        "--owner",
        "billing",
        "--permissions",
        "tasks:definitions:list,tasks:read",
        "--rate-limit",
        "5000/minute",
    )
    key_id = key_id_of(secret)
    assert secret.startswith("tes_") and key_id
    assert secret not in done.stderr  # shown once, on stdout only

    response = client.get(PATH, headers={"X-API-Key": secret})
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "5000"  # the key's own limit

    listed = json.loads(taskexec("keys", "list", "-o", "json").stdout)
    assert len(listed) == 1
    doc = listed[0]
    assert doc["id"] == key_id and doc["name"] == "billing-svc" and doc["owner"] == "billing"
    assert doc["permissions"] == ["tasks:definitions:list", "tasks:read"]
    assert doc["rateLimit"] == "5000/minute"
    assert doc["createdAt"] and doc["lastUsedAt"] and doc["revokedAt"] is None

    table = taskexec("keys", "list").stdout
    header, row = table.strip().splitlines()
    for column in ("ID", "NAME", "OWNER", "CREATED", "LAST USED", "REVOKED", "PERMISSIONS"):
        assert column in header
    assert key_id in row and "billing" in row and "tasks:read" in row
    assert "never" not in row  # it was used
    for output in (table, json.dumps(listed)):
        assert secret not in output and secret[len("tes_") + 13 :] not in output

    revoked = taskexec("keys", "revoke", key_id)
    assert key_id in revoked.stdout
    # The CLI announces the revocation on Redis: the running app forgets the key at once
    # (its listener thread may still be handling the message: allow it well under a second).
    revoked_at = time.monotonic()
    while (response := client.get(PATH, headers={"X-API-Key": secret})).status_code != 401:
        assert time.monotonic() - revoked_at < 0.5, "the announced revocation was not heard"
        time.sleep(0.01)
    assert response.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert json.loads(taskexec("keys", "list", "-o", "json").stdout)[0]["revokedAt"]
    assert "no active key" in taskexec("keys", "revoke", key_id, ok=False).stderr


def test_a_key_with_max_running(taskexec, client):
    secret, _ = create(taskexec, "--permissions", "*", "--max-running", "3")
    doc = json.loads(taskexec("keys", "list", "-o", "json").stdout)[0]
    assert doc["maxRunning"] == 3
    header, row = taskexec("keys", "list").stdout.strip().splitlines()
    assert "MAX RUNNING" in header and " 3 " in row
    # The key's tasks are submitted under it (shared/concurrency.py counts them).
    body = {"taskDefinitionId": "echo", "input": {}}
    created = client.post("/api/v1/tasks", json=body, headers={"X-API-Key": secret})
    assert created.status_code == 201, created.get_json()


def test_a_new_key_is_listed_as_never_used(taskexec):
    secret, _ = create(taskexec, "--permissions", "*")
    row = taskexec("keys", "list").stdout.strip().splitlines()[1]
    assert key_id_of(secret) in row
    assert "never" in row
    assert row.split()[2] == "billing-svc"  # the owner defaults to the name


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--permissions", "tasks:everything"], "unknown permission"),
        (["--permissions", ""], "unknown permission"),
        (["--permissions", "tasks:read", "--rate-limit", "lots"], "rate"),
        (["--permissions", "tasks:read", "--max-running", "0"], "max-running"),
    ],
)
def test_create_refuses_bad_input(taskexec, args, complaint):
    done = taskexec("keys", "create", "--name", "x", *args, ok=False)
    assert done.returncode != 0
    assert complaint in done.stderr
    assert json.loads(taskexec("keys", "list", "-o", "json").stdout) == []


def test_revoking_an_unknown_key_fails(taskexec):
    done = taskexec("keys", "revoke", "nosuchkey000", ok=False)
    assert done.returncode != 0


def test_token_mints_a_jwt_the_api_accepts(taskexec, client):
    token = taskexec(
        "token", "--subject", "reporting", "--permissions", "tasks:definitions:list", "--ttl", "120"
    ).stdout.strip()
    response = client.get(PATH, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert (
        client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    )


def test_token_uses_the_configured_issuer_and_audience(settings, taskexec, clean_db):
    configured = settings.with_overrides(jwt_issuer="https://idp.test", jwt_audience="taskexec")
    env = settings_env(configured)
    env.update(TASKEXEC_JWT_ISSUER="https://idp.test", TASKEXEC_JWT_AUDIENCE="taskexec")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "token", "--subject", "s", "--permissions", "*"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    app = create_app(configured)
    try:
        response = app.test_client().get(
            PATH, headers={"Authorization": f"Bearer {done.stdout.strip()}"}
        )
        assert response.status_code == 200
    finally:
        app.extensions["taskexec"].db.close()
