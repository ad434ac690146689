"""The OpenAPI document: valid, complete (routes, responses, errors, auth), and true to the API."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate

_CONVERTER = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.content_type.startswith("application/json")
    return dict(response.get_json())


def test_the_document_is_valid_openapi_3(spec):
    assert spec["openapi"].startswith("3.")
    validate(spec)  # raises with the first violation


def test_every_api_route_and_method_is_documented(app, spec):
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1") or rule.endpoint.startswith("api-docs."):
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule).rstrip("/") or "/"
        documented = spec["paths"].get(path) or spec["paths"].get(path + "/") or {}
        for method in sorted((rule.methods or set()) - _IGNORED_METHODS):
            if method.lower() not in documented:
                missing.append(f"{method} {path}")
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def test_both_security_schemes_are_declared_and_required_by_default(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"] == "bearer"
    assert {"ApiKey": []} in spec["security"] and {"Bearer": []} in spec["security"]


def test_the_task_logs_endpoint_documents_its_paging(spec):
    operation = spec["paths"]["/api/v1/tasks/{task_id}/logs"]["get"]
    names = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert names["limit"]["schema"]["maximum"] == 1000
    assert names["limit"]["schema"]["default"] == 100
    assert names["after"]["schema"]["minimum"] == 0
    assert "200" in operation["responses"]


def test_the_docs_page_is_served_without_credentials(client):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    assert b"swagger" in response.data.lower()


# ------------------------------------------------------------------ what each operation declares

_PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics"}
_ERROR_STATUSES = {"400", "401", "403", "404", "409", "413", "422", "429", "500", "503"}


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def _resolve(spec: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        section, name = obj["$ref"].split("/")[-2:]
        obj = spec["components"][section][name]
    return obj


def test_the_probes_and_metrics_are_documented_as_public(spec):
    for path in _PUBLIC_PATHS:
        operation = spec["paths"][path]["get"]
        assert {} in operation["security"] or operation["security"] == [], path
        assert "200" in operation["responses"], path


def test_every_operation_declares_a_success_schema_and_the_auth_errors(spec):
    problems = []
    for method, path, operation in _operations(spec):
        responses = operation["responses"]
        successes = [s for s in responses if s.startswith("2")]
        if not successes:
            problems.append(f"{method} {path}: no success response")
        for status in successes:
            if status == "204":
                continue  # No Content (DELETE /api/v1/schedules/{id}): no body to describe
            content = _resolve(spec, responses[status]).get("content", {})
            if not any("schema" in media for media in content.values()):
                problems.append(f"{method} {path}: {status} has no schema")
        if path in _PUBLIC_PATHS:
            continue
        for status in ("400", "401", "403", "429", "500", "503"):
            if status not in responses:
                problems.append(f"{method} {path}: {status} not declared")
        if "default" in responses:
            problems.append(f"{method} {path}: a catch-all default hides undocumented statuses")
    assert not problems, problems


def test_every_error_response_is_the_error_envelope(spec):
    for method, path, operation in _operations(spec):
        for status, response in operation["responses"].items():
            # A failed readiness probe reports its checks, with the envelope's `error` inside.
            if status not in _ERROR_STATUSES or path == "/readyz":
                continue
            schema = _resolve(spec, response)["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    envelope = spec["components"]["schemas"]["Error"]
    assert envelope["required"] == ["error"]
    body = _resolve(spec, envelope["properties"]["error"])
    assert sorted(body["required"]) == ["code", "details", "message"]
    assert {"VALIDATION_ERROR", "NOT_FOUND", "RATE_LIMITED", "INTERNAL_ERROR"} <= set(
        body["properties"]["code"]["enum"]
    )


def test_operation_ids_are_unique_and_rate_limit_headers_documented(spec):
    ids = [operation["operationId"] for _, _, operation in _operations(spec)]
    assert len(ids) == len(set(ids)), ids
    submit = spec["paths"]["/api/v1/tasks"]["post"]
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Location"} <= set(
        submit["responses"]["201"]["headers"]
    )
    assert "Retry-After" in spec["components"]["responses"]["TOO_MANY_REQUESTS"]["headers"]
    assert {p["name"] for p in submit["parameters"] if p["in"] == "header"} == {"Idempotency-Key"}


# ------------------------------------------------------------------ real responses match it


class Conformance:
    """Checks real responses against the response the document declares for them."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def __call__(self, method: str, path: str, response: Any) -> Any:
        operation = self.spec["paths"][path][method.lower()]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method} {path}: {status} undocumented"
        declared = _resolve(self.spec, operation["responses"][status])
        media = declared["content"]["application/json"]
        body = response.get_json()
        # The components ride along, so the schema's "#/components/..." references resolve.
        schema = {**media["schema"], "components": self.spec["components"]}
        OAS30Validator(schema, format_checker=oas30_format_checker).validate(body)
        for header in response.headers.keys():
            if header.startswith("X-RateLimit") or header in ("Location", "Retry-After"):
                assert header in declared.get("headers", {}), f"{method} {path}: {header}"
        return body


@pytest.fixture
def conforms(spec: dict[str, Any]) -> Conformance:
    return Conformance(spec)


ECHO = {"taskDefinitionId": "echo", "input": {"hello": "world"}}
APPROVE = {"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-1"}}
TASK = "/api/v1/tasks/{task_id}"


def test_task_responses_match_the_document(client, auth, conforms):
    headers = auth.key("*")
    created = conforms(
        "POST", "/api/v1/tasks", client.post("/api/v1/tasks", json=ECHO, headers=headers)
    )
    replayed = client.post(
        "/api/v1/tasks", json=ECHO, headers={**headers, "Idempotency-Key": "k-1"}
    )
    conforms("POST", "/api/v1/tasks", replayed)
    again = client.post("/api/v1/tasks", json=ECHO, headers={**headers, "Idempotency-Key": "k-1"})
    assert again.status_code == 200
    conforms("POST", "/api/v1/tasks", again)
    conforms("GET", TASK, client.get(f"/api/v1/tasks/{created['id']}", headers=headers))
    conforms("GET", "/api/v1/tasks", client.get("/api/v1/tasks?limit=1", headers=headers))
    logs = client.get(f"/api/v1/tasks/{created['id']}/logs", headers=headers)
    conforms("GET", TASK + "/logs", logs)

    bulk = client.post(
        "/api/v1/tasks/bulk",
        json={"tasks": [ECHO, {"taskDefinitionId": "nope"}, "not an object"]},
        headers=headers,
    )
    items = conforms("POST", "/api/v1/tasks/bulk", bulk)["items"]
    assert "id" in items[0] and items[1]["error"]["code"] == "NOT_FOUND"

    cancelled = client.post(f"/api/v1/tasks/{created['id']}/cancel", json={}, headers=headers)
    conforms("POST", TASK + "/cancel", cancelled)
    cancelled = conforms("GET", TASK, client.get(f"/api/v1/tasks/{created['id']}", headers=headers))
    assert cancelled["cancellation"]["requestedAt"]
    many = client.post(
        "/api/v1/tasks/cancel", json={"ids": [created["id"], items[0]["id"]]}, headers=headers
    )
    outcomes = conforms("POST", "/api/v1/tasks/cancel", many)["items"]
    assert outcomes[0]["error"]["code"] == "CONFLICT" and outcomes[1]["status"] == "CANCELLED"

    manual = client.post("/api/v1/tasks", json=APPROVE, headers=headers).get_json()["id"]
    done = client.post(
        f"/api/v1/tasks/{manual}/complete", json={"output": {"approved": True}}, headers=headers
    )
    assert conforms("POST", TASK + "/complete", done)["status"] == "COMPLETED"


def test_definition_and_task_api_responses_match_the_document(client, auth, conforms):
    headers = auth.key("*")
    conforms(
        "GET",
        "/api/v1/tasks/definitions",
        client.get("/api/v1/tasks/definitions?limit=100", headers=headers),
    )
    for definition in ("calculate-order-total", "approve-order", "sleep"):
        response = client.get(f"/api/v1/tasks/definitions/{definition}", headers=headers)
        conforms("GET", "/api/v1/tasks/definitions/{definition_id}", response)

    api = "/api/v1/task-apis/{api_name}"
    job = conforms(
        "POST", api, client.post("/api/v1/task-apis/echo", json={"timeout": 60}, headers=headers)
    )
    conforms(
        "GET", api, client.get(f"/api/v1/task-apis/echo?jobID={job['job_id']}", headers=headers)
    )
    listing = conforms("GET", api, client.get("/api/v1/task-apis/echo", headers=headers))
    assert listing["task_job_statuses"][0]["job_id"] == job["job_id"]
    job_path = f"/api/v1/task-apis/echo/{job['job_id']}"
    conforms("GET", api + "/{job_id}", client.get(job_path, headers=headers))
    conforms("DELETE", api + "/{job_id}", client.delete(job_path, headers=headers))
    stopped = conforms("GET", api + "/{job_id}", client.get(job_path, headers=headers))
    assert stopped["job_status"]["status"] == "status_stopped"
    assert "end_time" in stopped["job_status"]
    conforms(
        "DELETE",
        api,
        client.delete(f"/api/v1/task-apis/echo?jobID={job['job_id']}", headers=headers),
    )
    conforms("GET", "/healthz", client.get("/healthz"))
    conforms("GET", "/readyz", client.get("/readyz"))


@pytest.mark.parametrize(
    ("method", "path", "url", "body", "permissions", "status"),
    [
        ("GET", "/api/v1/tasks", "/api/v1/tasks?limit=0", None, "*", 400),
        ("GET", "/api/v1/tasks", "/api/v1/tasks", None, None, 401),
        ("POST", "/api/v1/tasks", "/api/v1/tasks", ECHO, "tasks:read", 403),
        ("GET", TASK, "/api/v1/tasks/nope", None, "*", 404),
        ("POST", "/api/v1/tasks", "/api/v1/tasks", {"taskDefinitionId": "nope"}, "*", 404),
        (
            "POST",
            "/api/v1/tasks",
            "/api/v1/tasks",
            {"taskDefinitionId": "calculate-order-total", "input": {"orderId": 5}},
            "*",
            422,
        ),
        ("POST", "/api/v1/tasks", "/api/v1/tasks", {"input": {"x": "y" * 1100000}}, "*", 413),
        ("DELETE", "/api/v1/task-apis/{api_name}", "/api/v1/task-apis/echo", None, "*", 400),
        ("GET", "/api/v1/task-apis/{api_name}", "/api/v1/task-apis/nope", None, "*", 404),
    ],
)
def test_error_responses_match_the_document(
    client, auth, conforms, method, path, url, body, permissions, status
):
    headers = auth.key(permissions) if permissions else {}
    response = client.open(url, method=method, json=body, headers=headers)
    assert response.status_code == status, response.get_json()
    assert conforms(method, path, response)["error"]["code"]


def test_refused_and_limited_responses_match_the_document(settings, backends, auth, spec):
    from api.app import create_app

    app = create_app(settings.with_overrides(ratelimit_enabled=True, ratelimit_default="1/minute"))
    try:
        client = app.test_client()
        headers = auth.key("*")
        first = client.get("/api/v1/tasks", headers=headers)
        Conformance(spec)("GET", "/api/v1/tasks", first)
        assert first.headers["X-RateLimit-Limit"] == "1"
        refused = client.get("/api/v1/tasks", headers=headers)
        assert refused.status_code == 429
        assert Conformance(spec)("GET", "/api/v1/tasks", refused)["error"]["code"] == "RATE_LIMITED"
        assert int(refused.headers["Retry-After"]) >= 1
    finally:
        app.extensions["taskexec"].db.close()


@pytest.mark.parametrize(
    ("created", "status"),
    [
        ("2433-08-07T04:48:38.598874+17:38", 200),  # schemathesis found this one: it was a 500
        ("2023-07-15T14:30:00-15:59", 200),
        ("0001-01-01T00:00:00+01:00", 400),  # before year 1 in UTC
        ("9999-12-31T23:59:59-01:00", 400),  # after year 9999 in UTC
    ],
)
def test_time_filters_with_any_offset_are_answered_not_failed(
    client, auth, conforms, created, status
):
    query = urlencode({"createdBefore": created, "createdAfter": created})
    response = client.get(f"/api/v1/tasks?{query}", headers=auth.key("tasks:list"))
    assert response.status_code == status, response.get_json()
    conforms("GET", "/api/v1/tasks", response)
