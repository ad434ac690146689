"""The console in a real browser (headless Chromium) against a live API and worker.

Each test saves screenshots of the pages it visits (docs/console.md shows them; set
TASKEXEC_CONSOLE_SCREENSHOTS=docs/console to refresh those).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from cli.base import ledger
from tests.browser.conftest import DESKTOP, PHONE, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

XSS = "<script>alert(1)</script>"
MAX_SHOT_HEIGHT = 1800  # the API docs page is far longer: its top half shows enough


def wait(driver: Any, timeout: float = 15) -> WebDriverWait:
    # Pages that refresh themselves replace their elements: one found a moment ago may be
    # gone when read (stale), which is a reason to look again, not a failure.
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.1,
        ignored_exceptions=[NoSuchElementException, StaleElementReferenceException],
    )


def sign_in(driver: Any, stack: Stack, key: str) -> None:
    """Sign in through the form, as a person would."""
    driver.delete_all_cookies()
    driver.get(stack.url + "/console/login")
    field = driver.find_element(By.NAME, "apiKey")
    field.send_keys(key)
    field.submit()
    wait(driver).until(ec.url_contains("/console/tasks"))


def shot(driver: Any, folder: Path, name: str) -> None:
    """Save a screenshot of the whole page at the current width."""
    width = driver.get_window_size()["width"]
    # The window's own bars take some of its height: add them, so the page fits whole.
    height = driver.execute_script(
        "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
    )
    least = DESKTOP[1] if width >= DESKTOP[0] else PHONE[1]
    driver.set_window_size(width, min(max(least, height), MAX_SHOT_HEIGHT))
    driver.save_screenshot(str(folder / f"{name}.png"))


def fits_the_width(driver: Any) -> bool:
    """Nothing sticks out sideways (a table may scroll inside its own box)."""
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
    )


def desktop(driver: Any) -> None:
    driver.set_window_size(*DESKTOP)


def phone(driver: Any) -> None:
    driver.set_window_size(*PHONE)


def test_sign_in_and_find_a_submitted_task(stack, browser, screenshots):
    desktop(browser)
    tid = stack.submit("echo", {"orderId": "ORD-42"}, workflowInstanceId="wf-browser-find")
    browser.delete_all_cookies()
    browser.get(stack.url + "/console/tasks")
    assert "/console/login" in browser.current_url  # no session: the sign-in form
    shot(browser, screenshots, "login")
    sign_in(browser, stack, stack.admin)
    browser.find_element(By.NAME, "workflowInstanceId").send_keys("wf-browser-find")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(browser).until(ec.presence_of_element_located((By.LINK_TEXT, tid[:12] + "…")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#task-rows tbody tr")) == 1
    assert fits_the_width(browser)
    # The table is replaced every few seconds: follow the link's address, not an element.
    browser.get(browser.execute_script("return document.querySelector('#task-rows tbody a').href"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "task-status"), "COMPLETED"))
    assert "ORD-42" in browser.find_element(By.ID, "task-output").text
    # Times are shown in the viewer's zone (India here), with the UTC time on hover.
    created = browser.find_element(By.CSS_SELECTOR, "dl.facts time")
    assert created.get_attribute("title").endswith(" UTC")
    assert "UTC" not in created.text and ("GMT+5:30" in created.text or "IST" in created.text)
    shot(browser, screenshots, "task-completed")


def test_watch_a_running_sleep_and_cancel_it(stack, browser, screenshots):
    desktop(browser)
    sign_in(browser, stack, stack.admin)
    tid = stack.submit("sleep", {"seconds": 60})
    browser.get(f"{stack.url}/console/tasks/{tid}")

    def shown(d: Any) -> float:
        """The progress bar's value (0 while there is none)."""
        bars = d.find_elements(By.ID, "task-progress")
        return float(bars[0].get_attribute("value")) if bars else 0.0

    # The page refreshes itself: the progress bar appears once the worker starts, then grows.
    first = wait(browser, 30).until(shown)
    wait(browser, 20).until(lambda d: shown(d) > first)
    assert "RUNNING" in browser.find_element(By.ID, "task-status").text
    assert "of 60s" in browser.find_element(By.ID, "progress-text").text
    shot(browser, screenshots, "task-running")
    browser.find_element(By.NAME, "reason").send_keys("stopped from the browser test")
    browser.find_element(By.ID, "cancel-graceful").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "task-status"), "CANCELLED"))
    assert "Cancelled." in browser.find_element(By.CSS_SELECTOR, ".notice").text
    assert stack.task(tid)["status"] == "CANCELLED"
    # The handler notices the cancel and logs it; the page's log tail shows the line.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        browser.refresh()
        if "sleep interrupted" in browser.page_source:
            break
        time.sleep(0.5)
    assert "sleep interrupted" in browser.find_element(By.ID, "task-log").text
    shot(browser, screenshots, "task-cancelled")


def test_the_log_tail_follows_a_running_task(stack, browser):
    desktop(browser)
    sign_in(browser, stack, stack.admin)
    tid = stack.submit("test-slow-logger", {"lines": 6, "pause": 0.7})
    browser.get(f"{stack.url}/console/tasks/{tid}")
    wait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "task-log"), "line 2 of 6"))
    wait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "task-status"), "COMPLETED"))
    assert "line 6 of 6" in browser.find_element(By.ID, "task-log").text


def test_a_read_only_key_gets_no_cancel_button_and_a_forged_post_is_refused(stack, browser):
    desktop(browser)
    tid = stack.submit("sleep", {"seconds": 60})
    reader = stack.auth.key(["tasks:read", "tasks:list"])["X-API-Key"]
    sign_in(browser, stack, reader)
    browser.get(f"{stack.url}/console/tasks/{tid}")
    wait(browser).until(ec.presence_of_element_located((By.ID, "task-status")))
    assert browser.find_elements(By.ID, "cancel-form") == []
    assert browser.find_elements(By.ID, "retry") == []
    # The same POST the cancel button would send, with the session's own CSRF token.
    status = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const csrf = document.querySelector("input[name=csrf]").value;
        fetch(arguments[0], {method: "POST", credentials: "same-origin",
                             body: new URLSearchParams({csrf: csrf, mode: "force"})})
          .then(r => done(r.status), e => done(String(e)));
        """,
        f"/console/tasks/{tid}/cancel",
    )
    assert status == 403
    assert stack.task(tid)["status"] in ("PENDING", "RUNNING")
    assert stack.api("POST", f"/api/v1/tasks/{tid}/cancel", json={"force": True}).ok


def test_the_xss_probe_shows_as_text(stack, browser, screenshots):
    desktop(browser)
    tid = stack.submit("echo", {"note": XSS}, workflowInstanceId="wf-" + XSS)
    sign_in(browser, stack, stack.admin)
    browser.get(f"{stack.url}/console/tasks/{tid}")
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "task-status"), "COMPLETED"))
    assert XSS in browser.find_element(By.ID, "task-input").text
    assert XSS in browser.find_element(By.ID, "task-output").text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check
    # No script ran from the data: every script on the page is ours (a file, or JSON data).
    inline = browser.execute_script(
        "return [...document.scripts].filter(s => !s.src && s.type !== 'application/json').length"
    )
    assert inline == 0
    browser.get(f"{stack.url}/console/tasks?workflowInstanceId=wf-{XSS}")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#task-rows tbody tr")))
    assert "wf-" + XSS in browser.find_element(By.ID, "task-rows").text
    shot(browser, screenshots, "xss-probe")


def test_a_definition_and_its_form_checked_before_sending(stack, browser, screenshots):
    desktop(browser)
    sign_in(browser, stack, stack.admin)
    browser.get(stack.url + "/console/definitions")
    assert browser.find_element(By.LINK_TEXT, "sleep")
    shot(browser, screenshots, "definitions")
    browser.find_element(By.LINK_TEXT, "sleep").click()
    wait(browser).until(ec.presence_of_element_located((By.ID, "submit-form")))
    field = browser.find_element(By.ID, "input")
    field.clear()
    field.send_keys('{"seconds": "soon"}')
    page = browser.current_url
    browser.find_element(By.ID, "submit-task").click()
    # Refused in the browser: nothing was sent, the page says which field is wrong.
    problems = wait(browser).until(ec.visibility_of_element_located((By.ID, "input-problems")))
    assert "input.seconds" in problems.text and "number" in problems.text
    assert browser.current_url == page
    shot(browser, screenshots, "definition")
    field = browser.find_element(By.ID, "input")
    field.clear()
    field.send_keys('{"seconds": 0.2}')
    browser.find_element(By.ID, "submit-task").click()
    wait(browser).until(ec.url_matches(r"/console/tasks/[0-9a-f-]{36}$"))
    wait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "task-status"), "COMPLETED"))


def test_queues_show_executors_and_the_last_hour(stack, browser, screenshots):
    desktop(browser)
    stack.submit("echo", {"n": 1})
    failed = stack.submit(
        "flaky", {"failTimes": 5}, executionConfig={"retryPolicy": {"maxRetries": 0}}
    )
    sign_in(browser, stack, stack.admin)
    deadline = time.monotonic() + 30
    while stack.task(failed)["status"] != "FAILED" and time.monotonic() < deadline:
        time.sleep(0.2)
    browser.get(stack.url + "/console/queues")
    table = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.queues")))
    assert "standard-executor" in table.text
    chart = browser.find_element(By.ID, "finished-chart")
    assert len(chart.find_elements(By.CSS_SELECTOR, "rect.bar-completed")) == 60
    heights = [
        float(r.get_attribute("height"))
        for r in chart.find_elements(By.CSS_SELECTOR, "rect.bar-completed, rect.bar-failed")
    ]
    assert max(heights) > 0
    assert "failed or timed out: " in browser.find_element(By.CSS_SELECTOR, ".legend").text
    assert "failed or timed out: 0" not in browser.find_element(By.CSS_SELECTOR, ".legend").text
    shot(browser, screenshots, "queues")


def test_schedules_are_listed(stack, browser, screenshots):
    desktop(browser)
    created = stack.api(
        "POST",
        "/api/v1/schedules",
        json={
            "name": "nightly report",
            "cron": "30 2 * * *",
            "timezone": "Europe/Paris",
            "task": {"taskDefinitionId": "echo", "input": {"report": "daily"}},
        },
    )
    assert created.status_code == 201, created.text
    sign_in(browser, stack, stack.admin)
    browser.get(stack.url + "/console/schedules")
    assert "nightly report" in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, screenshots, "schedules")


def test_webhooks_show_their_delivery_log(stack, browser, screenshots, backends):
    desktop(browser)
    created = stack.api(
        "POST",
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hooks/taskexec", "description": "billing sync"},
    )
    assert created.status_code == 201, created.text
    wid = created.json()["id"]
    for _ in range(3):
        assert stack.api("POST", f"/api/v1/webhooks/{wid}/test").status_code == 202
    # Two of them failed for good (as after an outage past the retry period).
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhook_deliveries SET status = 'FAILED', attempts = 31,"
            " error = 'connection refused', last_attempt_at = now()"
            " WHERE id IN (SELECT id FROM webhook_deliveries WHERE webhook_id = %s LIMIT 2)",
            (wid,),
        )
    sign_in(browser, stack, stack.admin)
    browser.get(stack.url + "/console/webhooks")
    browser.find_element(By.PARTIAL_LINK_TEXT, "127.0.0.1:9/hooks/taskexec").click()
    log = wait(browser).until(ec.presence_of_element_located((By.ID, "deliveries")))
    assert "webhook.test" in log.text and log.text.count("FAILED") == 2
    shot(browser, screenshots, "webhooks")
    # The failed ones, sent again in one click: the notice says how many, the log shows them due.
    button = browser.find_element(By.CSS_SELECTOR, "#redeliver-failed button")
    assert button.text == "Redeliver 2 failed"
    button.click()
    notice = wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".notice")))
    assert notice.text == "2 failed deliveries queued for delivery again."
    log = browser.find_element(By.ID, "deliveries")
    assert "FAILED" not in log.text and log.text.count("PENDING") == 3
    assert not browser.find_elements(By.ID, "redeliver-failed")


def test_pages_are_readable_at_phone_width(stack, browser, screenshots):
    tid = stack.submit("echo", {"phone": True})
    sign_in(browser, stack, stack.admin)
    desktop(browser)
    browser.get(stack.url + "/console/tasks")  # by now the earlier tests left a varied list
    assert fits_the_width(browser)
    shot(browser, screenshots, "tasks")
    phone(browser)
    try:
        for path, name in (
            ("/console/tasks", "tasks-phone"),
            (f"/console/tasks/{tid}", "task-phone"),
        ):
            browser.get(stack.url + path)
            wait(browser).until(ec.presence_of_element_located((By.TAG_NAME, "main")))
            assert fits_the_width(browser), path
            shot(browser, screenshots, name)
            phone(browser)
    finally:
        desktop(browser)


def test_the_api_docs_render_with_the_network_unreachable(stack, browser, screenshots):
    desktop(browser)
    browser.get(stack.url + "/api/v1/docs")
    # Swagger UI draws the whole API from this server's own files...
    title = wait(browser, 20).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title"))
    )
    assert "taskexec" in title.text
    wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 10)
    sources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert sources and all(s.startswith(stack.url) for s in sources), sources
    # ...while the internet (the CDN the page used to load them from) is out of its reach.
    outside = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch("https://cdn.jsdelivr.net/npm/swagger-ui-dist/swagger-ui.css", {mode: "no-cors"})
          .then(() => done("reached"), () => done("unreachable"));
        """
    )
    assert outside == "unreachable"
    shot(browser, screenshots, "api-docs")
