"""The console's HTTP contract, on SQLite and PostgreSQL: sessions, CSRF, roles, the sign-in
throttle (shared by daemons), escaping, the Content-Security-Policy and offline assets."""

from __future__ import annotations

import hashlib
import io
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest

from scheduler.config import Settings
from scheduler.console import auth
from scheduler.console.app import CSP
from tests.conftest import repository_at
from tests.support.console import PASSWORD, add_user, console_client, csrf_token, sign_in
from tests.support.harness import execute, scalar

XSS = "<script>alert(1)</script>"
ACTIONS = ("/console/campaigns/{id}/pause", "/console/campaigns/{id}/resume", "/console/campaigns/{id}/cancel",
           "/console/campaigns/{id}/resend", "/console/suppressions/add", "/console/suppressions/remove")
MULTIPART_ACTIONS = ("/console/campaigns/new", "/console/suppressions/import")


async def admin_inserts_campaign(repo, name: str, **columns) -> int:
    """As an admin writes it: raw SQL, no ORM."""
    values = {"name": name, "survey_id": "77", "instance_id": "3", "contacts_path": "/srv/x.csv",
              "start_at": "2026-01-01 00:00:00", "end_at": "2099-01-01 00:00:00", "status": "scheduled", **columns}
    names = ", ".join(values)
    postgres = repo.engine.dialect.name == "postgresql"
    marks = ", ".join(f"CAST(CAST(:{key} AS text) AS timestamptz)" if postgres and key.endswith("_at") else f":{key}"
                      for key in values)
    await execute(repo, f"INSERT INTO campaigns ({names}) VALUES ({marks})", **values)
    return int(await scalar(repo, "SELECT max(id) FROM campaigns"))


@pytest.fixture
async def admin(repo):
    await add_user(repo, "alice", "admin")
    await add_user(repo, "victor", "viewer")
    async with console_client(repo) as client:
        yield client


async def test_no_session_goes_to_the_sign_in_page(admin):
    response = await admin.get("/console/", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/console/login"
    fragment = await admin.get("/console/campaigns/table", headers={"X-Console-Fragment": "1"}, allow_redirects=False)
    assert fragment.status == 401  # the live refresh script then goes to the sign-in page
    for path in ("/console/daemons", "/console/campaigns/1", "/console/suppressions", "/console/campaigns/1/export.csv"):
        assert (await admin.get(path, allow_redirects=False)).status == 303, path
    for path in ("/console/campaigns/1/pause", "/console/logout", "/console/suppressions/add"):
        assert (await admin.post(path, data={"csrf_token": "x"}, allow_redirects=False)).status == 403, path


@pytest.mark.parametrize("secure", [False, True])
async def test_sign_in_sets_a_strict_http_only_cookie(repo, secure):
    await add_user(repo, "alice", "admin")
    settings = Settings.model_validate({"console": {"secure_cookie": secure}})
    async with console_client(repo, settings) as client:
        response = await client.post("/console/login", data={"username": "alice", "password": PASSWORD},
                                     allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/console/"
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith(f"{auth.COOKIE_NAME}=")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "SameSite=Strict" in cookie and "Path=/console/" in cookie
        assert ("secure" in attributes) is secure
        token = cookie.split(";")[0].split("=", 1)[1]
        # Only the token's SHA-256 is stored: a copy of the table signs nobody in.
        stored = await scalar(repo, "SELECT token_sha256 FROM console_sessions")
        assert stored == hashlib.sha256(token.encode()).hexdigest() != token
        page = await client.get("/console/", cookies={auth.COOKIE_NAME: token}, allow_redirects=False)
        assert page.status == 200 and "Campaigns" in await page.text()


@pytest.mark.parametrize("name, password", [("alice", "wrong password"), ("nobody", PASSWORD), ("", ""),
                                            ("alice" * 40, PASSWORD)])
async def test_a_wrong_password_gets_401_and_the_form_again(admin, name, password):
    response = await admin.post("/console/login", data={"username": name, "password": password},
                                allow_redirects=False)
    body = await response.text()
    assert response.status == 401
    assert 'name="username"' in body and 'name="password"' in body and "Wrong user name or password" in body
    assert auth.COOKIE_NAME not in response.headers.get("Set-Cookie", "")


async def test_more_than_five_failures_in_a_minute_get_429_on_every_daemon(db_url, repo):
    await add_user(repo, "alice", "admin")
    async with repository_at(db_url) as other_repo, console_client(repo) as first, \
            console_client(other_repo) as second:
        for attempt in range(5):  # alternate daemons: the count is in the database
            daemon = (first, second)[attempt % 2]
            wrong = await daemon.post("/console/login", data={"username": "alice", "password": f"guess {attempt}"},
                                      allow_redirects=False)
            assert wrong.status == 401
        for daemon in (first, second):
            refused = await daemon.post("/console/login", data={"username": "alice", "password": PASSWORD},
                                        allow_redirects=False)
            assert refused.status == 429  # even the right password, until the minute has passed
            # The header says when the minute of failures ends: at least 1 s, at most the minute
            # (rounded up); a missing header or another value fails here.
            assert 1 <= int(refused.headers["Retry-After"]) <= 61
            assert "Too many failed sign-ins" in await refused.text()
        # another user is not throttled by alice's failures
        await add_user(repo, "bob", "viewer")
        assert (await first.post("/console/login", data={"username": "bob", "password": PASSWORD},
                                 allow_redirects=False)).status == 303
        # a minute later alice may try again
        await execute(repo, "UPDATE console_login_attempts SET attempted_at = :then",
                      then=datetime.now(timezone.utc) - timedelta(seconds=61))
        assert (await second.post("/console/login", data={"username": "alice", "password": PASSWORD},
                                  allow_redirects=False)).status == 303


async def test_a_session_made_by_one_daemon_works_on_another(db_url, repo):
    await add_user(repo, "alice", "admin")
    async with repository_at(db_url) as other_repo, console_client(repo) as first, \
            console_client(other_repo) as second:
        await sign_in(first, "alice")
        cookie = first.session.cookie_jar.filter_cookies(first.make_url("/console/"))[auth.COOKIE_NAME].value
        page = await second.get("/console/", cookies={auth.COOKIE_NAME: cookie}, allow_redirects=False)
        assert page.status == 200


async def test_every_action_needs_the_page_csrf_token(repo, admin):
    campaign_id = await admin_inserts_campaign(repo, "steered")
    token = await sign_in(admin, "alice")
    for path in ACTIONS:
        url = path.format(id=campaign_id)
        for data in ({}, {"csrf_token": "forged"}, {"csrf_token": token[:-1]}):
            response = await admin.post(url, data=data, allow_redirects=False)
            assert response.status == 403, (url, data)
    for path in MULTIPART_ACTIONS:
        response = await admin.post(path, data={"name": "x", "file": io.BytesIO(b"phone\n"),
                                                      "contacts": io.BytesIO(b"phone\n")},
                                    allow_redirects=False)
        assert response.status == 403, path
    assert await scalar(repo, "SELECT status FROM campaigns WHERE id = :id", id=campaign_id) == "scheduled"
    assert (await admin.post("/console/logout", allow_redirects=False)).status == 403
    # with the token: done, through the same repository call as `campaign pause`
    paused = await admin.post(f"/console/campaigns/{campaign_id}/pause", data={"csrf_token": token},
                              allow_redirects=False)
    assert paused.status == 303 and paused.headers["Location"] == f"/console/campaigns/{campaign_id}?done=paused"
    assert await scalar(repo, "SELECT status FROM campaigns WHERE id = :id", id=campaign_id) == "paused"


async def test_a_token_from_another_site_or_session_is_refused(repo, admin, db_url):
    campaign_id = await admin_inserts_campaign(repo, "steered")
    token = await sign_in(admin, "alice")
    other_site = await admin.post(f"/console/campaigns/{campaign_id}/pause", data={"csrf_token": token},
                                  headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert other_site.status == 403
    async with console_client(repo) as second:
        others = await sign_in(second, "alice")  # a second session of the same user has its own token
        assert others != token
        response = await admin.post(f"/console/campaigns/{campaign_id}/pause", data={"csrf_token": others},
                                    allow_redirects=False)
        assert response.status == 403
    assert await scalar(repo, "SELECT status FROM campaigns WHERE id = :id", id=campaign_id) == "scheduled"


async def test_logout_ends_the_session(repo, admin):
    token = await sign_in(admin, "alice")
    cookie = admin.session.cookie_jar.filter_cookies(admin.make_url("/console/"))[auth.COOKIE_NAME].value
    response = await admin.post("/console/logout", data={"csrf_token": token}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/console/login"
    assert await scalar(repo, "SELECT count(*) FROM console_sessions") == 0
    replay = await admin.get("/console/", cookies={auth.COOKIE_NAME: cookie}, allow_redirects=False)
    assert replay.status == 303  # the old cookie is worth nothing


async def test_a_viewer_gets_403_on_every_action_and_sees_no_button(repo, admin):
    campaign_id = await admin_inserts_campaign(repo, "watched")
    await execute(repo, "INSERT INTO suppressions (number, reason) VALUES ('+16175550100', 'asked')")
    token = await sign_in(admin, "victor")
    for path in ACTIONS:
        response = await admin.post(path.format(id=campaign_id), data={"csrf_token": token, "confirm": "yes",
                                                                       "numbers": "6175550101",
                                                                       "number": "+16175550100"},
                                    allow_redirects=False)
        assert response.status == 403, path
    for path in MULTIPART_ACTIONS:
        response = await admin.post(path, data={"csrf_token": token, "file": io.BytesIO(b"phone\n6175550102\n"),
                                                "contacts": io.BytesIO(b"phone\n6175550102\n")}, allow_redirects=False)
        assert response.status == 403, path
    for path in ("/console/campaigns/new", f"/console/campaigns/{campaign_id}/confirm/resend",
                 f"/console/campaigns/{campaign_id}/confirm/cancel"):
        assert (await admin.get(path, allow_redirects=False)).status == 403, path
    assert await scalar(repo, "SELECT status FROM campaigns WHERE id = :id", id=campaign_id) == "scheduled"
    assert await scalar(repo, "SELECT count(*) FROM suppressions") == 1
    for path in ("/console/", f"/console/campaigns/{campaign_id}", "/console/suppressions"):
        body = await (await admin.get(path)).text()
        forms = re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', body)
        assert forms == ["/console/logout"], (path, forms)  # signing out is the viewer's only button
        assert "New campaign" not in body and 'id="pause"' not in body
    # a viewer may sign out
    assert (await admin.post("/console/logout", data={"csrf_token": token}, allow_redirects=False)).status == 303


async def test_values_from_admins_files_and_plum_are_escaped(repo, admin):
    campaign_id = await admin_inserts_campaign(
        repo, XSS, last_error='<img src=x onerror="alert(2)">', status="running",
        contacts_header='{"phone": "phone_number", "extra": ["<b onmouseover=alert(3)>name</b>"]}',
        ingested_at="2026-01-01 00:00:00", contacts_valid=1, contacts_total=1)
    await execute(repo, "INSERT INTO chunks (campaign_id, seq, status, contact_count, attempts, created_at, updated_at, "
                        "last_error) VALUES (:c, 0, 'unknown', 1, 1, :t, :t, :e)", c=campaign_id,
                  t=datetime.now(timezone.utc), e="<script>alert(4)</script>")
    await execute(repo, "INSERT INTO call_results (campaign_id, chunk_id, phone, status, received_at, body, body_sha256) "
                        "VALUES (:c, NULL, :p, :s, :t, '{}', 'x')", c=campaign_id, p="<i>+1</i>",
                  s="<svg onload=alert(5)>", t=datetime.now(timezone.utc))
    await execute(repo, "INSERT INTO suppressions (number, reason, source) VALUES ('+16175550100', :r, :s)",
                  r="<script>alert(6)</script>", s="<script>alert(6)</script>")
    await sign_in(admin, "alice")
    pages = ["/console/", "/console/campaigns/table", f"/console/campaigns/{campaign_id}",
             f"/console/campaigns/{campaign_id}/live", f"/console/campaigns/{campaign_id}/confirm/resend",
             f"/console/campaigns/{campaign_id}/contacts", "/console/suppressions"]
    for path in pages:
        body = await (await admin.get(path)).text()
        assert "<script>alert" not in body and "<img src=x" not in body and "<svg onload" not in body, path
        assert "<b onmouseover" not in body and "<i>+1</i>" not in body, path
        assert not re.search(r"<script(?![^>]*src=\"/console/static/console\.js\")", body), path
    campaign_page = await (await admin.get(f"/console/campaigns/{campaign_id}")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in campaign_page
    for shown in ("&lt;img src=x onerror=&#34;alert(2)&#34;&gt;", "&lt;b onmouseover=alert(3)&gt;name&lt;/b&gt;",
                  "&lt;script&gt;alert(4)&lt;/script&gt;", "&lt;svg onload=alert(5)&gt;"):
        assert shown in campaign_page, shown
    assert "&lt;script&gt;alert(6)&lt;/script&gt;" in await (await admin.get("/console/suppressions")).text()


async def test_every_answer_carries_the_content_security_policy(repo, admin):
    campaign_id = await admin_inserts_campaign(repo, "c")
    answers = [await admin.get("/console/", allow_redirects=False),  # 303
               await admin.get("/console/login"),  # 200
               await admin.post("/console/login", data={"username": "alice", "password": "x"}),  # 401
               await admin.get("/console/static/console.css")]
    token = await sign_in(admin, "alice")
    answers += [await admin.get("/console/"), await admin.get(f"/console/campaigns/{campaign_id}"),
                await admin.post(f"/console/campaigns/{campaign_id}/pause", allow_redirects=False),  # 403
                await admin.get("/console/campaigns/999"),  # 404
                await admin.post(f"/console/campaigns/{campaign_id}/resume", data={"csrf_token": token}),  # 409
                await admin.get("/console/campaigns/1/export.csv")]
    statuses = [a.status for a in answers]
    assert statuses == [303, 200, 401, 200, 200, 200, 403, 404, 409, 200]
    for answer in answers:
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self';" in CSP and "style-src 'self';" in CSP and "unsafe" not in CSP


async def test_pages_load_nothing_from_another_host(repo, admin):
    campaign_id = await admin_inserts_campaign(repo, "c")
    await sign_in(admin, "alice")
    assets = set()
    for path in ("/console/login", "/console/", f"/console/campaigns/{campaign_id}", "/console/campaigns/new",
                 "/console/suppressions", "/console/daemons"):
        body = await (await admin.get(path)).text()
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', body):
            assert url.startswith("/console/"), (path, url)
        assets |= set(re.findall(r'(?:src|href)="(/console/static/[^"]+)"', body))
        assert "style=" not in body, path  # the CSP allows no inline style
    assert assets == {"/console/static/console.js", "/console/static/console.css"}
    for asset, kind in (("/console/static/console.js", "javascript"), ("/console/static/console.css", "text/css")):
        response = await admin.get(asset)
        text = await response.text()
        assert response.status == 200 and kind in response.headers["Content-Type"]
        assert not re.search(r"https?://|//[a-z]|@import|url\(", text), asset


async def test_removing_a_user_or_changing_the_password_ends_their_sessions(repo, admin):
    await sign_in(admin, "alice")
    await repo.set_password("alice", "x" * 10, datetime.now(timezone.utc))
    assert (await admin.get("/console/", allow_redirects=False)).status == 303
    await sign_in(admin, "victor")
    await repo.remove_user("victor")
    assert (await admin.get("/console/", allow_redirects=False)).status == 303


async def test_passwords_are_never_logged(repo, admin, caplog):
    caplog.set_level(logging.DEBUG)
    await admin.post("/console/login", data={"username": "alice", "password": "my-secret-guess"})
    await sign_in(admin, "alice")
    assert "my-secret-guess" not in caplog.text and PASSWORD not in caplog.text
    assert "failed sign-in for 'alice'" in caplog.text
    hashes = await scalar(repo, "SELECT password_hash FROM console_users WHERE name = 'alice'")
    assert hashes.startswith("$argon2id$") and PASSWORD not in hashes
