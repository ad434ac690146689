"""A wrong TASKEXEC_URL gets one clear line from the CLI: what answered, and what was expected."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.live_api import gunicorn
from tests.integration.test_cli_client import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAGE = b"<!DOCTYPE html><html><head><title>Welcome</title></head><body>hello</body></html>"


class _Page(BaseHTTPRequestHandler):
    """A web server that is not taskexec: HTML for every path, 404 under /missing."""

    def do_GET(self) -> None:
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def web_page() -> Iterator[str]:
    yield from _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Page))


@pytest.fixture
def tls_page(tmp_path: Path) -> Iterator[str]:
    """The same web server behind TLS, with a self-signed certificate no client trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    yield from _serve(server)


@pytest.fixture
def service(settings, auth, tmp_path: Path) -> Iterator[Service]:
    with gunicorn(settings, tmp_path, workers=1) as url:
        yield Service(url, auth.key("*")["X-API-Key"])


def _one_line(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "<" not in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def test_a_url_ending_in_the_api_prefix_is_understood(service):
    for url in (f"{service.url}/api/v1", f"{service.url}/api/v1/", f"{service.url}/"):
        listed = service.cli("list", "--url", url)
        assert listed.returncode == 0, (url, listed.stderr)
        assert listed.stdout.startswith("ID ")


def test_a_url_that_is_not_http_is_a_usage_error(service):
    port = service.url.rsplit(":", 1)[1]
    for url in (f"127.0.0.1:{port}", f"localhost:{port}", "ftp://127.0.0.1/", "http://h:port/"):
        line = _one_line(service.cli("list", "--url", url), 2)
        assert repr(url) in line and "expected the service's base URL" in line, line
        assert "http://127.0.0.1:8000" in line
    line = _one_line(service.cli("list", env=service.env(TASKEXEC_URL=f"127.0.0.1:{port}")), 2)
    assert "TASKEXEC_URL" in line


def test_a_web_page_is_named_not_printed(service, web_page):
    for path, status in (("", 200), ("/missing", 404)):
        url = f"http://{web_page}{path}"
        line = _one_line(service.cli("list", "--url", url), 3)
        assert line == (
            f"error: {url} is not a taskexec API: GET /api/v1/tasks answered HTTP {status}"
            " with text/html; expected the service's base URL, e.g. http://127.0.0.1:8000"
        )
    # https to a server that speaks plain HTTP.
    line = _one_line(service.cli("list", "--url", f"https://{web_page}"), 3)
    assert "does not speak TLS (is it http://, not https://?)" in line, line


def test_tls_mistakes_say_what_went_wrong(service, tls_page):
    untrusted = _one_line(service.cli("list", "--url", f"https://{tls_page}"), 3)
    assert untrusted.endswith("its TLS certificate is not trusted"), untrusted
    plain = _one_line(service.cli("list", "--url", f"http://{tls_page}"), 3)
    assert "(is it https://?)" in plain, plain
