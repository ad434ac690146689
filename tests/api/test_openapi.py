"""The OpenAPI document: valid OpenAPI 3, every /api/v1 route in it, both auth methods declared."""

from __future__ import annotations

import re
from typing import Any

import pytest
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
