"""The client's HTTP session: one call per request, failures as click errors with exit codes."""

from __future__ import annotations

import json
from typing import IO, Any

import click
import requests

EXIT_API_ERROR = 1  # the API answered with an error (its code and message go to stderr)
EXIT_USAGE = 2  # click's own code for a bad command line
EXIT_CONNECTION = 3  # the API could not be reached
EXIT_UNSUCCESSFUL = 4  # --wait/--watch: the task finished, but not COMPLETED
EXIT_CODES = (
    "Exit codes: 0 success; 1 the API returned an error; 2 usage error; 3 cannot reach the API;"
    " 4 (--wait/--watch) the task finished but did not complete."
)


class ApiFailure(click.ClickException):
    """The API answered with an error envelope."""

    exit_code = EXIT_API_ERROR

    def __init__(self, status: int, code: str, message: str, details: Any, retry_after: float):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.details, self.retry_after = status, code, details, retry_after

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message} (HTTP {self.status})", err=True)
        if self.details:
            click.echo(f"details: {json.dumps(self.details, sort_keys=True)}", err=True)


class ConnectionFailure(click.ClickException):
    """The API could not be reached at all."""

    exit_code = EXIT_CONNECTION

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class Client:
    """A thin requests wrapper that turns every failure into one of the two errors above."""

    def __init__(self, url: str, api_key: str | None, token: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        if api_key:
            self.session.headers["X-API-Key"] = api_key
        elif token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON body of a success."""
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ReadTimeout as exc:
            raise ConnectionFailure(
                f"no answer from {self.url} within {self.timeout:g}s"
                " (the request may still have been applied)"
            ) from exc
        except requests.RequestException as exc:
            raise ConnectionFailure(f"cannot reach {self.url}: {_reason(exc)}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict):
                error = {"code": f"HTTP_{response.status_code}", "message": response.text[:300]}
            raise ApiFailure(
                response.status_code,
                str(error.get("code")),
                str(error.get("message")),
                error.get("details"),
                float(response.headers.get("Retry-After") or 1),
            )
        if body is None:
            raise ApiFailure(
                response.status_code,
                "INVALID_RESPONSE",
                f"{self.url} did not answer with JSON; is it a taskexec service?",
                None,
                1,
            )
        return body


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("Temporary failure in name resolution", "unknown host"),
        ("timed out", "timed out"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__
