"""401 without valid credentials, 403 without the permission; API keys and JWTs."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest

from api.app import create_app
from shared import db, store
from shared.credentials import PERMISSIONS, key_id_of
from tests.helpers import JWT_SECRET, SEED_ORDER, Auth

# Each seed endpoint and the permission it needs.
ENDPOINTS = [
    ("post", "/api/v1/tasks", "tasks:execute"),
    ("get", "/api/v1/tasks/{id}", "tasks:read"),
    ("post", "/api/v1/tasks/{id}/cancel", "tasks:cancel"),
    ("get", "/api/v1/tasks", "tasks:list"),
    ("get", "/api/v1/tasks/definitions", "tasks:definitions:list"),
    ("get", "/api/v1/tasks/definitions/calculate-order-total", "tasks:definitions:read"),
]


@pytest.fixture(scope="module")
def client(base_settings: Any) -> Any:
    """One app for the module: these tests only add keys and tasks nobody else looks at."""
    app = create_app(base_settings)
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["taskexec"].db.close()


@pytest.fixture(scope="module")
def auth(backends: Any) -> Auth:
    """Mints keys without emptying the tables first (each key is new and unique anyway)."""
    return Auth(backends.database_url)


def call(client: Any, method: str, path: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method == "post":
        kwargs["json"] = SEED_ORDER if path == "/api/v1/tasks" else {}
    return getattr(client, method)(path.format(id=uuid.uuid4()), **kwargs)


def assert_unauthorized(response: Any) -> dict[str, Any]:
    assert response.status_code == 401, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "UNAUTHORIZED"
    assert "Bearer" in response.headers["WWW-Authenticate"]
    return error


def bearer(claims: dict[str, Any], secret: str = JWT_SECRET, algorithm: str = "HS256") -> dict:
    return {"Authorization": "Bearer " + jwt.encode(claims, secret, algorithm=algorithm)}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "permissions": ["*"], "iat": now, "exp": now + 300, **changes}


# ---------------------------------------------------------------- 401


@pytest.mark.parametrize(("method", "path", "_"), ENDPOINTS)
def test_every_endpoint_needs_credentials(client, method, path, _):
    assert_unauthorized(call(client, method, path, {}))


@pytest.mark.parametrize(
    "key",
    [
        "tes_abcdefghijkl_" + "x" * 32,  # well formed, never issued
        "not-a-key",
        "",
    ],
)
def test_an_unknown_api_key_is_401(client, auth, key):
    auth.key("*")  # a valid key exists; the presented one is not it
    headers = {"X-API-Key": key} if key else {"X-API-Key": " "}
    assert_unauthorized(client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers))


def test_a_tampered_api_key_is_401(client, auth):
    key = auth.key("*")["X-API-Key"]
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")  # right id, wrong secret
    assert_unauthorized(client.get("/api/v1/tasks", headers={"X-API-Key": tampered}))


def test_a_revoked_api_key_is_401(client, auth, backends):
    headers = auth.key("*")
    assert client.get("/api/v1/tasks", headers=headers).status_code == 200
    conn = db.connect(backends.database_url)
    with conn:
        assert store.revoke_api_key(conn, key_id_of(headers["X-API-Key"]))
    conn.close()
    # Nothing announced the revocation: refused when the cached copy expires, within 1 s.
    revoked_at = time.monotonic()
    while (response := client.get("/api/v1/tasks", headers=headers)).status_code != 401:
        assert time.monotonic() - revoked_at < 1.0, "a revoked key still works after 1 s"
        time.sleep(0.02)
    assert_unauthorized(response)


@pytest.mark.parametrize(
    "authorization",
    ["Basic YWxpY2U6cGFzc3dvcmQ=", "Bearer", "Bearer ", "Token abc", "bearer not.a.jwt"],
)
def test_a_malformed_authorization_header_is_401(client, authorization):
    assert_unauthorized(client.get("/api/v1/tasks", headers={"Authorization": authorization}))


# ---------------------------------------------------------------- 403


@pytest.mark.parametrize(("method", "path", "permission"), ENDPOINTS)
def test_each_endpoint_is_403_without_its_permission(client, auth, method, path, permission):
    others = [p for p in PERMISSIONS if p not in (permission, "tasks:admin")]
    response = call(client, method, path, auth.key(others))
    assert response.status_code == 403, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "FORBIDDEN"
    assert permission in error["message"]


@pytest.mark.parametrize(("method", "path", "permission"), ENDPOINTS)
def test_each_endpoint_admits_its_permission_alone(client, auth, method, path, permission):
    response = call(client, method, path, auth.key([permission]))
    # Past authentication and authorisation (a random task id may well be 404).
    assert response.status_code not in (401, 403), response.get_data(as_text=True)


def test_the_wildcard_grants_everything(client, auth):
    headers = auth.key("*")
    for method, path, _ in ENDPOINTS:
        assert call(client, method, path, headers).status_code not in (401, 403)


# ---------------------------------------------------------------- JWT


def test_jwt_happy_path(client, auth):
    headers = auth.token(["tasks:execute", "tasks:read"], subject="svc-orders")
    response = client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers)
    assert response.status_code == 201, response.get_json()
    task_id = response.get_json()["id"]
    assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 200
    # The token's permissions bind: it may not list.
    assert client.get("/api/v1/tasks", headers=headers).status_code == 403


def test_a_space_separated_scope_claim_grants_permissions(client):
    scoped = claims(scope="tasks:list tasks:read")
    del scoped["permissions"]
    headers = bearer(scoped)
    assert client.get("/api/v1/tasks", headers=headers).status_code == 200
    assert client.post("/api/v1/tasks", json=SEED_ORDER, headers=headers).status_code == 403


def test_an_expired_token_is_401(client, auth):
    # Beyond the 10 s leeway.
    error = assert_unauthorized(client.get("/api/v1/tasks", headers=auth.token("*", ttl=-60)))
    assert "expired" in error["message"]


def test_a_token_without_exp_is_401(client):
    no_exp = claims()
    del no_exp["exp"]
    error = assert_unauthorized(client.get("/api/v1/tasks", headers=bearer(no_exp)))
    assert "exp" in error["message"]


def test_a_token_without_sub_is_401(client):
    no_sub = claims()
    del no_sub["sub"]
    assert_unauthorized(client.get("/api/v1/tasks", headers=bearer(no_sub)))


def test_a_token_signed_with_another_secret_is_401(client):
    assert_unauthorized(client.get("/api/v1/tasks", headers=bearer(claims(), "y" * 40)))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS512", "none"])
def test_a_token_with_another_algorithm_is_401(client, algorithm):
    secret = JWT_SECRET if algorithm != "none" else None
    token = jwt.encode(claims(), secret, algorithm=algorithm)  # type: ignore[arg-type]
    assert_unauthorized(client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}))


def test_permissions_must_be_a_list_of_strings(client):
    assert_unauthorized(client.get("/api/v1/tasks", headers=bearer(claims(permissions="*"))))
