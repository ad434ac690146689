"""Swagger UI's scripts and styles for /api/v1/docs, served from the installed package.

flask-smorest's page loads them from OPENAPI_SWAGGER_UI_URL; pointing it here instead of a CDN
makes the API docs render on a machine without internet access (the swagger-ui-bundle package
ships Swagger UI's dist files and its Apache-2.0 licence).
"""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound

from api.auth import public

#: Where the page finds the assets: OPENAPI_SWAGGER_UI_URL in create_app.
URL = "/api/docs/swagger-ui/"  # outside /api/v1: not an API route the OpenAPI document lists
#: The files the page loads (nothing else of the package is served).
ASSETS = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"}
    | {"favicon-16x16.png", "favicon-32x32.png"}
)

bp = Blueprint("api_docs_assets", __name__, url_prefix=URL.rstrip("/"))


@bp.route("/<name>")
@public
def asset(name: str) -> Response:
    """One of Swagger UI's files, cacheable for a day (its name carries no version)."""
    if name not in ASSETS:
        raise NotFound()
    response = send_from_directory(str(swagger_ui_path), name, max_age=86_400)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response
