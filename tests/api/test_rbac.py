"""RBAC: every route declares its permission, and each permission opens exactly its own routes.

Generic over `app.url_map`: a route added anywhere is walked too. A route without a declared
permission fails the first test; one that does not enforce what it declares fails the matrix.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from api.auth import PUBLIC, requires
from shared.credentials import PERMISSIONS

IGNORED_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask itself, never by the view
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Extra query for views whose permission depends on it (the Cortex job status by ?jobID=).
QUERY = {"task_apis.get_api": "jobID={id}"}
# Views that need a second permission besides the one they declare: the matrix grants it too.
ALSO_NEEDS = {"task_apis.list_apis": "tasks:list"}
# Routes a second permission opens on its own (issue 17: the owner with tasks:execute, or any
# task with tasks:admin).
ALSO_OPENED_BY = {
    "tasks.pin_task": "tasks:admin",
    "tasks.unpin_task": "tasks:admin",
    "console.pin": "tasks:admin",
}


def routes(app: Flask) -> Iterator[tuple[str, str, str, Any]]:
    """Yield (method, rule, endpoint, view) for every registered route."""
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            yield method, rule.rule, rule.endpoint, app.view_functions[rule.endpoint]


def undeclared(app: Flask) -> list[str]:
    """Routes whose view declares no permission, or one that does not exist."""
    problems = []
    for method, rule, endpoint, view in routes(app):
        permission = getattr(view, "permission", None)
        if permission != PUBLIC and permission not in PERMISSIONS:
            problems.append(f"{method} {rule} ({endpoint}): permission={permission!r}")
    return problems


def url_for_rule(rule: str, endpoint: str) -> str:
    some_id = str(uuid.uuid4())
    url = re.sub(r"<(?:[^:<>]+:)?[^<>]+>", some_id, rule)
    query = QUERY.get(endpoint)
    return f"{url}?{query.format(id=some_id)}" if query else url


def protected(app: Flask) -> list[tuple[str, str, str, str]]:
    """(method, url, endpoint, permission) of every non-public route."""
    return [
        (method, url_for_rule(rule, endpoint), endpoint, view.permission)
        for method, rule, endpoint, view in routes(app)
        if getattr(view, "permission", None) not in (None, PUBLIC)
    ]


def call(client: Any, method: str, url: str, headers: dict[str, str]) -> Any:
    body = {"json": {}} if method in BODY_METHODS else {}
    return client.open(url, method=method, headers=headers, **body)


def test_every_route_declares_a_known_permission(app):
    assert list(routes(app)), "no routes found: the walker is broken"
    assert undeclared(app) == []


def test_the_walker_catches_a_route_without_a_permission(app):
    app.add_url_rule("/api/v1/forgotten", "forgotten", lambda: "oops")
    app.add_url_rule(
        "/api/v1/typo", "typo", requires("tasks:raed")(lambda: "oops"), methods=["POST"]
    )
    assert undeclared(app) == [
        "GET /api/v1/forgotten (forgotten): permission=None",
        "POST /api/v1/typo (typo): permission='tasks:raed'",
    ]


def test_every_protected_route_refuses_anonymous_callers(app, client):
    for method, url, endpoint, _ in protected(app):
        response = call(client, method, url, {})
        assert response.status_code == 401, (method, url, endpoint, response.status_code)
        assert response.get_json()["error"]["code"] == "UNAUTHORIZED"


def test_each_permission_alone_opens_exactly_its_own_routes(app, client, auth):
    keys = {permission: auth.key([permission]) for permission in PERMISSIONS}
    keys["*"] = auth.key(["*"])
    failures = []
    checked = 0
    for method, url, endpoint, required in protected(app):
        for permission, headers in keys.items():
            if endpoint in ALSO_NEEDS and permission != "*":
                headers = auth.key([permission, ALSO_NEEDS[endpoint]])
            status = call(client, method, url, headers).status_code
            checked += 1
            allowed = permission in (required, "*", ALSO_OPENED_BY.get(endpoint))
            ok = (400 <= status < 500 or 200 <= status < 300) and status not in (401, 403)
            if allowed and not ok or not allowed and status != 403:
                failures.append(
                    f"{method} {endpoint} with {permission}: {status} (needs {required})"
                )
    assert checked >= len(PERMISSIONS) * 8
    assert failures == []


def test_the_cortex_api_listing_needs_both_definitions_read_and_tasks_list(app, client, auth):
    if "task_apis.get_api" not in app.view_functions:
        pytest.skip("the Cortex Task API is not registered")
    both = auth.key(["tasks:definitions:read", "tasks:list"])
    for url in ("/api/v1/task-apis/echo", "/api/v1/task-apis"):
        for permission in PERMISSIONS:
            assert client.get(url, headers=auth.key([permission])).status_code == 403, permission
        assert client.get(url, headers=both).status_code == 200


def test_tasks_admin_grants_visibility_not_other_rights(client, auth):
    admin = auth.key(["tasks:admin"])
    for method, url in (("GET", "/api/v1/tasks"), ("POST", "/api/v1/tasks")):
        assert call(client, method, url, admin).status_code == 403
