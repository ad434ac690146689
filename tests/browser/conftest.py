"""Browser fixtures: a live API (gunicorn) and worker, and Debian's headless Chromium.

One stack and one browser per module keep the browser tests to seconds each. Chromium runs
with a proxy that points nowhere and a resolver that knows only 127.0.0.1, so any page that
reached for the internet (a CDN) would break here as it breaks in an air-gapped deployment.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cli.base import ledger
from config.settings import Settings
from tests.helpers import Auth, Backends, Processes, unavailable
from tests.integration.live_api import gunicorn
from tests.integration.logging_definitions import MODULE

#: Where the tests save their screenshots: docs/console/ when asked (the docs show them).
SCREENSHOTS_ENV = "TASKEXEC_CONSOLE_SCREENSHOTS"
#: The viewer's time zone in the browser: not UTC, so local times differ from UTC ones.
VIEWER_TZ = "Asia/Kolkata"
DESKTOP = (1280, 800)
PHONE = (390, 844)


@dataclass
class Stack:
    """The live API's URL, a way to mint keys, and an admin key for setting things up."""

    url: str
    auth: Auth
    admin: str

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"X-API-Key": self.admin, **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)

    def submit(self, definition: str, data: dict[str, Any], **body: Any) -> str:
        response = self.api(
            "POST", "/api/v1/tasks", json={"taskDefinitionId": definition, "input": data, **body}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v1/tasks/{task_id}").json())


@pytest.fixture(scope="module")
def stack(
    backends: Backends, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """gunicorn with two workers (the session secret comes from Redis: both must agree)."""
    logs = tmp_path_factory.mktemp("console-stack")
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE tasks, api_keys, schedules, webhooks CASCADE")
    settings = base_settings.with_overrides(definition_modules=MODULE, webhook_allow_private=True)
    processes = Processes(settings, logs)
    try:
        processes.worker(concurrency=2)
        with gunicorn(settings, logs, workers=2) as url:
            auth = Auth(backends.database_url)
            yield Stack(url, auth, auth.key("*")["X-API-Key"])
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's packages, driven by chromedriver (no downloads)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        unavailable("Chromium and chromedriver are not installed (apt-get install chromium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--lang=en-GB",
        # No network but this machine: a proxy that refuses, names that resolve nowhere.
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>;127.0.0.1",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    service = Service(driver_path, env={**os.environ, "TZ": VIEWER_TZ})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder screenshots go to: $TASKEXEC_CONSOLE_SCREENSHOTS, else a temporary one."""
    wanted = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
