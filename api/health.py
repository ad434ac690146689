"""Liveness and readiness probes, without authentication or rate limits."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import public
from api.responses.health import readiness
from api.services import services
from shared import store
from shared.broker import BROKER_ERRORS
from shared.errors import ServiceUnavailable, TaskexecError

blp = Blueprint("health", __name__)


@blp.route("/healthz", methods=["GET"])
@public
def healthz() -> Response:
    """The process is alive. Response 200: {"status": "ok"}."""
    return jsonify({"status": "ok"})


@blp.route("/readyz", methods=["GET"])
@public
def readyz() -> tuple[Response, int]:
    """Postgres and Redis are reachable. 200 when both are, else 503 naming what is not."""
    svc = services()
    checks = {"database": "ok", "broker": "ok"}
    try:
        with svc.db.connection() as conn:
            store.ping(conn)
    except TaskexecError:
        checks["database"] = "unavailable"
    try:
        with svc.broker.app.connection_for_write() as connection:
            # One quick retry, no back-off sleep: a probe must answer fast, not wait it out.
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=2
            )
    except BROKER_ERRORS:
        checks["broker"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    error = None if ready else ServiceUnavailable("a backing service is unreachable", checks)
    return jsonify(readiness(checks, error)), 200 if ready else 503
