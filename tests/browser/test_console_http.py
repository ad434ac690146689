"""The console over HTTP, without a browser: sign-in, cookie, CSRF, permissions, escaping.

The browser tests (test_console_browser.py) show the same pages working in Chromium; these
pin the rules a browser cannot show on its own (cookie flags, a forged POST's status).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from api.console import api_docs, session
from cli.base import ledger
from tests.helpers import submit

XSS = "<script>alert(1)</script>"
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:2000]
    return match.group(1)


def sign_in(client: Any, secret: str) -> str:
    """Sign in through the form; return the session's CSRF token."""
    form = client.get("/console/login", headers=BROWSER)
    assert form.status_code == 200
    done = client.post(
        "/console/login",
        data={"apiKey": secret, "csrf": _csrf(form.get_data(as_text=True))},
        headers=BROWSER,
    )
    assert done.status_code == 303, done.get_data(as_text=True)[:2000]
    page = client.get("/console/tasks", headers=BROWSER)
    assert page.status_code == 200
    return _csrf(page.get_data(as_text=True))


@pytest.fixture
def admin_key(auth) -> str:
    return auth.key("*")["X-API-Key"]


def test_a_browser_without_a_session_goes_to_the_sign_in_form(client):
    response = client.get("/console/tasks?status=RUNNING", headers=BROWSER)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/console/login?next=")
    # A script (no HTML in Accept) gets the API's 401 envelope instead of a redirect.
    scripted = client.get("/console/tasks")
    assert scripted.status_code == 401
    assert scripted.get_json()["error"]["code"] == "UNAUTHORIZED"


def test_sign_in_sets_a_strict_httponly_expiring_cookie(client, admin_key, settings):
    sign_in(client, admin_key)
    form = client.get("/console/login", headers=BROWSER)
    cookie = form.headers["Set-Cookie"]
    assert f"{session.COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert f"Max-Age={settings.console_session_seconds}" in cookie
    assert "Secure" not in cookie  # plain http here; over https it is Secure (next test)
    # The cookie does not show the key it holds (nor its secret part, which may itself hold
    # underscores: split once past the id, or a leading "_" left "" to look for, in anything).
    secret = admin_key.split("_", 2)[2]
    assert secret and admin_key not in cookie and secret not in cookie


def test_the_cookie_is_secure_behind_https(client, admin_key):
    response = client.get("/console/login", headers=BROWSER, base_url="https://localhost")
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_wrong_key_is_refused_and_the_form_says_why(client):
    form = client.get("/console/login", headers=BROWSER)
    response = client.post(
        "/console/login",
        data={"apiKey": "tes_nosuchkey000_" + "x" * 32, "csrf": _csrf(form.get_data(True))},
        headers=BROWSER,
    )
    assert response.status_code == 401
    assert "invalid API key" in response.get_data(as_text=True)


def test_a_jwt_signs_in_too(client, auth):
    token = auth.token(["tasks:list", "tasks:read"])["Authorization"].split()[1]
    sign_in(client, token)
    assert "alice" in client.get("/console/tasks", headers=BROWSER).get_data(as_text=True)


def test_a_forged_cookie_is_no_session(client):
    client.set_cookie(session.COOKIE, "gAAAAAforged", path="/console")
    response = client.get("/console/tasks", headers=BROWSER)
    assert response.status_code == 302


def test_a_post_without_the_csrf_token_is_refused(client, admin_key):
    sign_in(client, admin_key)
    tid = submit(client, {"X-API-Key": admin_key}, "sleep", {"seconds": 30})
    refused = client.post(f"/console/tasks/{tid}/cancel", data={"mode": "force"}, headers=BROWSER)
    assert refused.status_code == 403
    assert "CSRF" in refused.get_data(as_text=True)
    task = client.get(f"/api/v1/tasks/{tid}", headers={"X-API-Key": admin_key}).get_json()
    assert task["status"] == "PENDING"


def test_cancel_through_the_console(client, admin_key):
    csrf = sign_in(client, admin_key)
    tid = submit(client, {"X-API-Key": admin_key}, "sleep", {"seconds": 30})
    done = client.post(
        f"/console/tasks/{tid}/cancel",
        data={"mode": "graceful", "reason": "console test", "csrf": csrf},
        headers=BROWSER,
    )
    assert done.status_code == 303
    page = client.get(done.headers["Location"], headers=BROWSER).get_data(as_text=True)
    assert "CANCELLED" in page and "console test" in page
    again = client.post(
        f"/console/tasks/{tid}/cancel", data={"mode": "force", "csrf": csrf}, headers=BROWSER
    )
    assert again.status_code == 409
    assert "already CANCELLED" in again.get_data(as_text=True)


def test_a_read_only_key_sees_no_actions_and_its_forged_post_is_refused(client, auth):
    admin = auth.key("*")
    reader = auth.key(["tasks:read", "tasks:list"])["X-API-Key"]
    tid = submit(client, admin, "sleep", {"seconds": 30})  # both keys are alice's: her task
    csrf = sign_in(client, reader)
    page = client.get(f"/console/tasks/{tid}", headers=BROWSER)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "cancel-form" not in html and 'id="retry"' not in html and 'id="pin"' not in html
    forged = client.post(
        f"/console/tasks/{tid}/cancel", data={"mode": "force", "csrf": csrf}, headers=BROWSER
    )
    assert forged.status_code == 403
    assert "tasks:cancel" in forged.get_data(as_text=True)
    assert client.get(f"/api/v1/tasks/{tid}", headers=admin).get_json()["status"] == "PENDING"


def test_another_owners_task_is_not_found(client, auth):
    theirs = submit(client, auth.key("*", owner="bob"), "sleep", {"seconds": 30})
    sign_in(client, auth.key(["tasks:read", "tasks:list"], owner="carol")["X-API-Key"])
    assert client.get(f"/console/tasks/{theirs}", headers=BROWSER).status_code == 404
    rows = client.get("/console/tasks/rows", headers=BROWSER).get_data(as_text=True)
    assert theirs not in rows


def test_user_data_is_escaped(client, admin_key):
    headers = {"X-API-Key": admin_key}
    tid = submit(client, headers, "echo", {"note": XSS}, workflowInstanceId="wf-" + XSS[:20])
    sign_in(client, admin_key)
    html = client.get(f"/console/tasks/{tid}", headers=BROWSER).get_data(as_text=True)
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Content-Security-Policy" in client.get("/console/tasks", headers=BROWSER).headers


def test_submit_form_checks_input_with_the_api(client, admin_key):
    csrf = sign_in(client, admin_key)
    bad = client.post(
        "/console/definitions/sleep/submit",
        data={"input": '{"seconds": "soon"}', "priority": "HIGH", "csrf": csrf},
        headers=BROWSER,
    )
    assert bad.status_code == 422
    assert "seconds" in bad.get_data(as_text=True)
    good = client.post(
        "/console/definitions/sleep/submit",
        data={"input": '{"seconds": 1}', "priority": "HIGH", "csrf": csrf},
        headers=BROWSER,
    )
    assert good.status_code == 303
    tid = good.headers["Location"].rsplit("/", 1)[1]
    task = client.get(f"/api/v1/tasks/{tid}", headers={"X-API-Key": admin_key}).get_json()
    assert task["priority"] == "HIGH" and task["input"] == {"seconds": 1}


def test_every_page_renders(client, admin_key):
    sign_in(client, admin_key)
    tid = submit(client, {"X-API-Key": admin_key}, "echo", {"a": 1})
    for url in (
        "/console/tasks",
        "/console/tasks?status=PENDING&status=RUNNING&limit=50",
        "/console/tasks/rows",
        f"/console/tasks/{tid}",
        f"/console/tasks/{tid}/live",
        "/console/definitions",
        "/console/definitions/sleep",
        "/console/queues",
        "/console/queues/live",
        "/console/schedules",
    ):
        response = client.get(url, headers=BROWSER)
        assert response.status_code == 200, (url, response.get_data(as_text=True)[:3000])
    # A page number past any offset Postgres takes (bigint) or no number at all: the first or
    # the last page a list allows, never a 500.
    for url in ("/console/definitions", "/console/schedules", "/console/webhooks"):
        for page in ("100000000000000000000", "abc", "-3"):
            response = client.get(f"{url}?page={page}", headers=BROWSER)
            assert response.status_code == 200, (url, page, response.get_data(as_text=True)[:3000])
    bad = client.get("/console/tasks?createdAfter=yesterday", headers=BROWSER)
    assert bad.status_code == 400 and "createdAfter" in bad.get_data(as_text=True)
    assert client.get(f"/console/tasks/{uuid.uuid4()}", headers=BROWSER).status_code == 404


def test_sign_out_ends_the_session(client, admin_key):
    csrf = sign_in(client, admin_key)
    out = client.post("/console/logout", data={"csrf": csrf}, headers=BROWSER)
    assert out.status_code == 303
    assert client.get("/console/tasks", headers=BROWSER).status_code == 302


def test_api_docs_load_swagger_ui_from_this_server(client):
    page = client.get("/api/v1/docs").get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith(api_docs.URL) for s in sources), sources
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.data) > 1000, source
    assert client.get(api_docs.URL + "index.html").status_code == 404


def test_webhooks_and_their_delivery_log(app_with, auth):
    client = app_with(webhook_allow_private=True).test_client()
    admin = auth.key("*")
    created = client.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook?x=<b>", "description": XSS},
        headers=admin,
    )
    assert created.status_code == 201, created.get_json()
    wid = created.get_json()["id"]
    assert client.post(f"/api/v1/webhooks/{wid}/test", headers=admin).status_code == 202
    csrf = sign_in(client, admin["X-API-Key"])
    listing = client.get("/console/webhooks", headers=BROWSER).get_data(as_text=True)
    assert "127.0.0.1:9/hook" in listing and XSS not in listing
    page = client.get(f"/console/webhooks/{wid}", headers=BROWSER)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "webhook.test" in html and "PENDING" in html
    delivery = re.search(r"/deliveries/([0-9a-f-]{36})/redeliver", html)
    assert delivery
    again = client.post(
        f"/console/webhooks/{wid}/deliveries/{delivery.group(1)}/redeliver",
        data={"csrf": csrf},
        headers=BROWSER,
    )
    assert again.status_code == 303
    # No failed delivery: no button to send the failed ones again.
    html = client.get(again.headers["Location"], headers=BROWSER).get_data(as_text=True)
    assert "Queued for delivery again." in html and 'id="redeliver-failed"' not in html
    # A reader sees the log but no redeliver button, and a forged redeliver is refused.
    reader = auth.key(["webhooks:read"])["X-API-Key"]
    reader_csrf = sign_in_anywhere(client, reader)
    html = client.get(f"/console/webhooks/{wid}", headers=BROWSER).get_data(as_text=True)
    assert "webhook.test" in html and "/redeliver" not in html
    forged = client.post(
        f"/console/webhooks/{wid}/deliveries/{delivery.group(1)}/redeliver",
        data={"csrf": reader_csrf},
        headers=BROWSER,
    )
    assert forged.status_code == 403


def test_the_failed_deliveries_are_sent_again_from_the_console(app_with, auth, backends):
    client = app_with(webhook_allow_private=True).test_client()
    admin = auth.key("*")
    created = client.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=admin
    ).get_json()
    wid = created["id"]
    for _ in range(3):
        assert client.post(f"/api/v1/webhooks/{wid}/test", headers=admin).status_code == 202
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE webhook_deliveries SET status = 'FAILED', error = 'HTTP 503'"
            " WHERE id IN (SELECT id FROM webhook_deliveries WHERE webhook_id = %s LIMIT 2)",
            (wid,),
        )
    csrf = sign_in(client, admin["X-API-Key"])
    html = client.get(f"/console/webhooks/{wid}", headers=BROWSER).get_data(as_text=True)
    assert re.search(r'id="redeliver-failed"[^>]*/redeliver-failed"', html)
    assert "Redeliver 2 failed" in html
    only_failed = client.get(f"/console/webhooks/{wid}?status=FAILED", headers=BROWSER)
    assert "Redeliver 2 failed" in only_failed.get_data(as_text=True)
    sent = client.post(
        f"/console/webhooks/{wid}/redeliver-failed", data={"csrf": csrf}, headers=BROWSER
    )
    assert sent.status_code == 303
    html = client.get(sent.headers["Location"], headers=BROWSER).get_data(as_text=True)
    assert "2 failed deliveries queued for delivery again." in html
    assert 'id="redeliver-failed"' not in html  # none failed now
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT status, count(*) FROM webhook_deliveries WHERE webhook_id = %s GROUP BY 1",
            (wid,),
        )
        assert dict(cur.fetchall()) == {"PENDING": 3}
    # Without a CSRF token, or disabled: refused, nothing sent.
    assert (
        client.post(f"/console/webhooks/{wid}/redeliver-failed", headers=BROWSER).status_code == 403
    )
    client.patch(f"/api/v1/webhooks/{wid}", json={"disabled": True}, headers=admin)
    refused = client.post(
        f"/console/webhooks/{wid}/redeliver-failed", data={"csrf": csrf}, headers=BROWSER
    )
    assert refused.status_code == 409
    # A reader gets no button and may not post.
    reader = auth.key(["webhooks:read"])["X-API-Key"]
    reader_csrf = sign_in_anywhere(client, reader)
    client.patch(f"/api/v1/webhooks/{wid}", json={"disabled": False}, headers=admin)
    html = client.get(f"/console/webhooks/{wid}", headers=BROWSER).get_data(as_text=True)
    assert "redeliver-failed" not in html
    forged = client.post(
        f"/console/webhooks/{wid}/redeliver-failed", data={"csrf": reader_csrf}, headers=BROWSER
    )
    assert forged.status_code == 403


def _log_page(client: Any, wid: str, query: str = "") -> tuple[str, list[str], str | None]:
    """A webhook page's summary, delivery ids and Next link (its query), as a browser sees it."""
    page = client.get(f"/console/webhooks/{wid}?{query}", headers=BROWSER)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    summary = re.search(r'<p class="summary">([^<]*)</p>', html)
    assert summary, html[:2000]
    following = re.search(r'<a href="\?([^"]*)">Next', html)
    ids = re.findall(r"/deliveries/([0-9a-f-]{36})/redeliver", html)
    return summary.group(1), ids, following.group(1).replace("&amp;", "&") if following else None


def test_a_long_delivery_log_shows_an_estimate_and_still_pages(app_with, auth, monkeypatch):
    # Two rows a page and an exact count only up to 2: five deliveries are past both.
    monkeypatch.setattr("api.console.webhooks.PAGE_SIZE", 2)
    client = app_with(list_exact_count_max=2).test_client()
    admin = auth.key("*")
    hooks = []
    for name, events in (("busy", 5), ("quiet", 2)):
        created = client.post(
            "/api/v1/webhooks", json={"url": f"https://hooks.example.com/{name}"}, headers=admin
        )
        assert created.status_code == 201, created.get_json()
        wid = created.get_json()["id"]
        hooks.append(wid)
        for _ in range(events):
            assert client.post(f"/api/v1/webhooks/{wid}/test", headers=admin).status_code == 202
    busy, quiet = hooks
    sign_in(client, admin["X-API-Key"])
    summary, seen, following = _log_page(client, busy)
    estimate = re.fullmatch(r"(\d+) \(estimate\) deliveries", summary)
    assert estimate and int(estimate.group(1)) >= 3, summary
    # An estimate cannot say where the log ends: Next follows while a page has more after it.
    pages = 1
    while following is not None:
        assert following == f"page={pages + 1}"
        _, ids, following = _log_page(client, busy, following)
        seen += ids
        pages += 1
    assert pages == 3 and len(set(seen)) == len(seen) == 5
    # Under the cap the total is the exact count, and a full last page has no Next.
    summary, ids, following = _log_page(client, quiet)
    assert (summary, len(ids), following) == ("2 deliveries", 2, None)


def sign_in_anywhere(client: Any, secret: str) -> str:
    """Sign in with a key that may not list tasks; return the CSRF token of the session."""
    form = client.get("/console/login", headers=BROWSER)
    done = client.post(
        "/console/login",
        data={"apiKey": secret, "csrf": _csrf(form.get_data(as_text=True))},
        headers=BROWSER,
    )
    assert done.status_code == 303
    page = client.get("/console/logout", headers=BROWSER)
    return _csrf(page.get_data(as_text=True))


def test_finished_per_minute_counts_each_minute_of_the_last_hour(backends, clean_db):
    from cli.base import ledger
    from shared import store
    from tests.helpers import task_row

    ended = {  # minutes ago -> (owner, status) of tasks that ended then
        0: [("alice", "COMPLETED"), ("alice", "FAILED")],
        5: [("alice", "COMPLETED"), ("bob", "COMPLETED"), ("alice", "TIMED_OUT")],
        59: [("bob", "FAILED")],
        61: [("alice", "COMPLETED")],  # over an hour ago: not counted
    }
    with ledger(backends.database_url) as conn:
        for ago, tasks in ended.items():
            for owner, status in tasks:
                task = store.insert_tasks(conn, [task_row(owner=owner)])[0]
                with conn.cursor() as cur:
                    cur.execute(
                        "UPDATE tasks SET status = %s, end_time = date_trunc('minute', now())"
                        " - make_interval(mins => %s) + interval '10 seconds' WHERE id = %s",
                        (status, ago, task.id),
                    )
        everyone = store.finished_per_minute(conn, None)
        alice = store.finished_per_minute(conn, "alice")
    assert len(everyone) == 60
    assert [m.minute for m in everyone] == sorted(m.minute for m in everyone)
    by_age = {59 - i: (m.completed, m.failed) for i, m in enumerate(everyone)}
    assert by_age[0] == (1, 1) and by_age[5] == (2, 1) and by_age[59] == (0, 1)
    assert sum(m.completed + m.failed for m in everyone) == 6
    assert {
        59 - i: (m.completed, m.failed) for i, m in enumerate(alice) if m.completed or m.failed
    } == {0: (1, 1), 5: (1, 1)}


def test_the_chart_scales_to_the_busiest_minute():
    from datetime import UTC, datetime

    from api.console import chart
    from shared.store import MinuteCount

    minutes = [MinuteCount(datetime(2026, 1, 1, 0, i, tzinfo=UTC), 0, 0) for i in range(60)]
    minutes[-1] = MinuteCount(minutes[-1].minute, 7, 3)
    drawn = chart.build(minutes)
    assert [t.text for t in drawn.y_ticks] == ["0", "2", "4", "6", "8", "10"]
    last = drawn.bars[-1]
    assert last.completed_height + last.failed_height == pytest.approx(drawn.baseline - chart.TOP)
    assert all(b.completed_height == 0 for b in drawn.bars[:-1])
    assert drawn.x_ticks[-1].text == "2026-01-01T00:59:00.000Z"
    assert [chart.nice_ceiling(v) for v in (0, 1, 3, 6, 11, 101)] == [1, 1, 5, 10, 20, 200]


def test_a_session_expires(app_with, auth):
    client = app_with(console_session_seconds=1).test_client()
    sign_in(client, auth.key("*")["X-API-Key"])
    time.sleep(2.1)  # Fernet timestamps are whole seconds: past the 1 s lifetime for sure
    assert client.get("/console/tasks", headers=BROWSER).status_code == 302


def test_a_revoked_key_ends_the_session(client, auth, backends):
    from cli.base import ledger
    from shared import store

    secret = auth.key("*")["X-API-Key"]
    sign_in(client, secret)
    with ledger(backends.database_url) as conn:
        store.revoke_api_key(conn, secret.split("_")[1])
    # Refused once the API's cached copy of the key expires, within a second.
    revoked_at = time.monotonic()
    while client.get("/console/tasks", headers=BROWSER).status_code != 302:
        assert time.monotonic() - revoked_at < 1.0, "a revoked key still works after 1 s"
        time.sleep(0.02)


def test_a_waiting_task_says_why(client, admin_key):
    headers = {"X-API-Key": admin_key}
    later = submit(client, headers, "echo", {}, delay=3_600_000)
    queued = submit(client, headers, "sleep", {"seconds": 30})
    sign_in(client, admin_key)
    page = client.get(f"/console/tasks/{later}", headers=BROWSER).get_data(as_text=True)
    assert "pendingReason: SCHEDULED" in page and "starts at its runAt" in page
    # No worker runs here: the due task waits for one, as the API says.
    api = client.get(f"/api/v1/tasks/{queued}", headers=headers).get_json()
    page = client.get(f"/console/tasks/{queued}", headers=BROWSER).get_data(as_text=True)
    assert f"pendingReason: {api['pendingReason']}" in page
    rows = client.get("/console/tasks/rows?pendingReason=SCHEDULED", headers=BROWSER).get_data(
        as_text=True
    )
    assert later[:12] in rows and queued[:12] not in rows
