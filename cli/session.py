"""The client's HTTP session: one call per request, failures as click errors with exit codes."""

from __future__ import annotations

import json
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import click
import requests

EXIT_API_ERROR = 1  # the API answered with an error (its code and message go to stderr)
EXIT_USAGE = 2  # click's own code for a bad command line
EXIT_CONNECTION = 3  # the API could not be reached
EXIT_UNSUCCESSFUL = 4  # --wait/--watch: the task finished, but not COMPLETED
EXIT_CODES = (
    "Exit codes: 0 success; 1 the API returned an error; 2 usage error; 3 cannot reach the API"
    " (or something else answered); 4 (--wait/--watch) the task finished but did not complete."
)
API_PREFIX = "/api/v1"
EXPECTED = "the service's base URL, e.g. http://127.0.0.1:8000"


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


class BadUrl(click.ClickException):
    """--url / TASKEXEC_URL is not an http(s) URL at all."""

    exit_code = EXIT_USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def base_url(url: str) -> str:
    """The service's base URL from --url: http(s) only, and a trailing /api/v1 dropped.

    Every request path starts with /api/v1, so a URL copied from the API's own links
    (http://host/api/v1) means the same service.
    """
    parts = urlsplit(url.strip())
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise BadUrl(
            f"TASKEXEC_URL/--url {url!r} has an invalid port; expected {EXPECTED}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUrl(f"TASKEXEC_URL/--url {url!r} is not an http(s) URL; expected {EXPECTED}")
    if parts.query or parts.fragment:
        raise BadUrl(f"TASKEXEC_URL/--url {url!r} has a query or fragment; expected {EXPECTED}")
    path = parts.path.rstrip("/").removesuffix(API_PREFIX).rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Client:
    """A thin requests wrapper that turns every failure into one of the two errors above."""

    def __init__(self, url: str, api_key: str | None, token: str | None, timeout: float) -> None:
        self.url = base_url(url)
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
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code >= 400 and isinstance(error, dict):
            raise ApiFailure(
                response.status_code,
                str(error.get("code")),
                str(error.get("message")),
                error.get("details"),
                float(response.headers.get("Retry-After") or 1),
            )
        if response.status_code >= 400 or body is None:
            # A web server, a proxy's error page or another service: say what answered, not
            # its page.
            kind = (response.headers.get("Content-Type") or "no content type").split(";")[0]
            what = "JSON without the API's error envelope" if body is not None else kind
            raise ConnectionFailure(
                f"{self.url} is not a taskexec API: {method} {path} answered HTTP"
                f" {response.status_code} with {what}; expected {EXPECTED}"
            )
        return body


def _reason(exc: requests.RequestException) -> str:
    """Why a request got no answer, in a few words (requests' own text is a nested repr)."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "its TLS certificate is not trusted"
        if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
            return "it does not speak TLS (is it http://, not https://?)"
        return "the TLS handshake failed"
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("Temporary failure in name resolution", "unknown host"),
        ("timed out", "timed out"),
        # Plain HTTP to a TLS port: the server hangs up without an answer.
        ("RemoteDisconnected", "it closed the connection without answering (is it https://?)"),
        ("Connection reset", "it reset the connection (is it https://?)"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__
