"""The console's actions go through the CLI's own code: the same checks and messages for a new
campaign, the same repository calls for pause/resume/cancel/resend and the do-not-call list,
the same export file. On SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import io
import re
from datetime import datetime, timedelta, timezone

import pytest

from scheduler.cli import _new_campaign_from_args
from scheduler.config import Settings
from scheduler.errors import UserError
from scheduler.export import write_export
from tests.support.console import add_user, console_client, sign_in
from tests.support.harness import execute, scalar, valid_numbers, write_contacts

NOW = datetime.now(timezone.utc)


def form(**overrides) -> dict:
    fields = {"name": "Spring NPS", "survey_id": "77", "instance_id": "3",
              "start": (NOW - timedelta(minutes=1)).isoformat(), "end": (NOW + timedelta(hours=2)).isoformat(),
              "max_attempts": "1", "reattempt_wait": "", "result_url": "", "chunk_size": "",
              "calling_window": "", "excluded_weekdays": ""}
    fields.update(overrides)
    return fields


async def post_campaign(client, token: str, fields: dict, contacts: bytes | None, name: str = "spring.csv"):
    data = {"csrf_token": token, **fields}  # the token first, as the page's form sends it
    if contacts is not None:
        data["contacts"] = (io.BytesIO(contacts), name)
    body = _multipart(data)
    return await client.post("/console/campaigns/new", data=body, allow_redirects=False)


def _multipart(data: dict):
    from aiohttp import FormData

    body = FormData()
    for key, value in data.items():
        if isinstance(value, tuple):
            body.add_field(key, value[0], filename=value[1], content_type="text/csv")
        else:  # a content type makes it multipart, as a browser sends a form with a file input
            body.add_field(key, value, content_type="text/plain")
    return body


@pytest.fixture
async def admin(repo):
    await add_user(repo, "alice", "admin")
    async with console_client(repo) as client:
        client.token = await sign_in(client, "alice")
        yield client


async def test_a_new_campaign_stores_the_uploaded_file(repo, admin, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(25)).read_bytes()
    response = await post_campaign(admin, admin.token, form(chunk_size="10", calling_window="08:00-21:00",
                                                            excluded_weekdays="sun", draft="yes"), contacts)
    assert response.status == 303, await response.text()
    campaign_id = int(re.fullmatch(r"/console/campaigns/(\d+)\?done=created", response.headers["Location"]).group(1))
    row = await repo.get_campaign(campaign_id)
    assert (row.name, row.status, row.chunk_size, row.calling_window_start, row.calling_window_end,
            row.excluded_weekdays, row.contacts_path) == ("Spring NPS", "draft", 10, "08:00", "21:00", "sun",
                                                          "spring.csv")
    stored = await repo.stored_contacts(campaign_id)
    assert stored is not None and stored.file_name == "spring.csv" and stored.size_bytes == len(contacts)
    page = await (await admin.get(response.headers["Location"])).text()
    assert "Campaign created" in page and "a draft is not picked up until it is resumed" in page


@pytest.mark.parametrize("fields, upload", [
    (form(end="2020-01-01T00:00:00Z", max_attempts="3"), True),
    (form(start="tomorrow", survey_id=" ", calling_window="25:00-26:00", excluded_weekdays="1,2"), True),
    (form(max_attempts="3", reattempt_wait="5", chunk_size="0"), True),
    (form(), False),
])
async def test_bad_fields_get_the_cli_messages(repo, admin, tmp_path, fields, upload):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(3))
    response = await post_campaign(admin, admin.token, fields, contacts.read_bytes() if upload else None)
    assert response.status == 400
    page = await response.text()
    shown = [line for line in re.findall(r"<li>(.*?)</li>", page)]
    if not upload:
        assert shown == ["--contacts: no file was uploaded (or it is empty); choose the contacts CSV file"]
        return
    args = argparse.Namespace(contacts=str(contacts), draft=False, **{
        key: (int(v) if key in ("max_attempts", "reattempt_wait", "chunk_size") and v.strip() else v or None)
        for key, v in fields.items()})
    with pytest.raises(UserError) as cli:
        _new_campaign_from_args(args, Settings(), datetime.now(timezone.utc))
    from markupsafe import escape

    assert shown == [str(escape(line.strip())) for line in str(cli.value).splitlines()[1:]]
    assert await scalar(repo, "SELECT count(*) FROM campaigns") == 0


async def test_a_number_field_that_is_not_a_number_is_named_like_the_flag(admin, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(3)).read_bytes()
    response = await post_campaign(admin, admin.token, form(max_attempts="three"), contacts)
    assert response.status == 400
    assert "argument --max-attempts: invalid int value: &#39;three&#39;" in await response.text()


async def test_pause_resume_cancel_use_the_cli_rules(repo, admin):
    await execute(repo, "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at) "
                        "VALUES ('c', '1', '2', '/x', :s, :e)", s=NOW, e=NOW + timedelta(hours=1))
    token = admin.token
    assert (await admin.post("/console/campaigns/1/pause", data={"csrf_token": token},
                             allow_redirects=False)).status == 303
    again = await admin.post("/console/campaigns/1/pause", data={"csrf_token": token})
    assert again.status == 409  # the CLI's refusal, as a page
    assert "campaign 1 is paused; only running, scheduled campaigns can become paused" in await again.text()
    assert (await admin.post("/console/campaigns/1/resume", data={"csrf_token": token},
                             allow_redirects=False)).status == 303
    page = await (await admin.get("/console/campaigns/1")).text()
    assert 'href="/console/campaigns/1/confirm/cancel"' in page
    confirm = await (await admin.get("/console/campaigns/1/confirm/cancel")).text()
    assert "Cancelling is final" in confirm
    assert (await admin.post("/console/campaigns/1/cancel", data={"csrf_token": token},
                             allow_redirects=False)).status == 303
    assert await scalar(repo, "SELECT status FROM campaigns WHERE id = 1") == "cancelled"
    assert (await admin.get("/console/campaigns/404")).status == 404


async def test_resend_is_confirmed_and_warns_of_calling_twice(repo, admin):
    await execute(repo, "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at, status) "
                        "VALUES ('c', '1', '2', '/x', :s, :e, 'completed_with_errors')", s=NOW, e=NOW + timedelta(hours=1))
    for seq in (0, 1):
        await execute(repo, "INSERT INTO chunks (campaign_id, seq, status, contact_count, attempts, created_at, "
                            "updated_at) VALUES (1, :seq, 'unknown', 5, 1, :t, :t)", seq=seq, t=NOW)
    page = await (await admin.get("/console/campaigns/1")).text()
    assert "Unknown chunks (2)" in page and "may call people twice" in page
    confirm = await (await admin.get("/console/campaigns/1/confirm/resend?chunk=1")).text()
    assert "may call people twice" in confirm and 'name="chunk" value="1"' in confirm
    unconfirmed = await admin.post("/console/campaigns/1/resend", data={"csrf_token": admin.token, "chunk": "1"},
                                   allow_redirects=False)
    assert unconfirmed.status == 303 and unconfirmed.headers["Location"].endswith("/confirm/resend")
    assert await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'unknown'") == 2
    one = await admin.post("/console/campaigns/1/resend", data={"csrf_token": admin.token, "chunk": "1",
                                                                "confirm": "yes"}, allow_redirects=False)
    assert one.status == 303
    assert await scalar(repo, "SELECT status FROM chunks WHERE id = 1") == "pending"
    assert await scalar(repo, "SELECT status FROM campaigns WHERE id = 1") == "scheduled"  # as `chunk resend` does
    rest = await admin.post("/console/campaigns/1/resend", data={"csrf_token": admin.token, "confirm": "yes"},
                            allow_redirects=False)
    assert rest.status == 303 and await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'unknown'") == 0


async def test_the_do_not_call_list(repo, admin):
    token = admin.token
    added = await admin.post("/console/suppressions/add", data={"csrf_token": token, "numbers": "617-253-1000, 303 555 0199",
                                                                "reason": "asked"})
    assert added.status == 200
    assert "2 number(s) added to the suppression list (0 already there)" in await added.text()
    bad = await admin.post("/console/suppressions/add", data={"csrf_token": token, "numbers": "12345"})
    assert bad.status == 400 and "nothing was added; fix these numbers first" in await bad.text()
    listed = _multipart({"csrf_token": token, "reason": "file",
                         "file": (io.BytesIO(b"phone_number,name\n2125550111,a\n"), "dnc.csv")})
    imported = await admin.post("/console/suppressions/import", data=listed)
    assert "1 number(s) added" in await imported.text()
    broken = _multipart({"csrf_token": token, "file": (io.BytesIO(b"6175550100\nnot a number\n"), "list.txt")})
    refused = await admin.post("/console/suppressions/import", data=broken)
    text = await refused.text()
    assert refused.status == 400 and "suppress import: nothing was added; fix these lines of list.txt first" in text
    assert "line 2:" in text
    found = await (await admin.get("/console/suppressions?q=617")).text()
    assert "+16172531000" in found and "+13035550199" not in found and "1 number(s) containing" in found
    removed = await admin.post("/console/suppressions/remove", data={"csrf_token": token, "number": "+16172531000"})
    assert "+16172531000 removed from the suppression list" in await removed.text()
    missing = await admin.post("/console/suppressions/remove", data={"csrf_token": token, "number": "+16172531000"})
    assert missing.status == 400 and "is not on the suppression list" in await missing.text()
    assert await scalar(repo, "SELECT count(*) FROM suppressions") == 2


async def test_export_is_the_file_campaign_export_writes(repo, admin, tmp_path):
    await execute(repo, "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at, "
                        "contacts_header) VALUES ('c', '1', '2', '/x', :s, :e, :h)", s=NOW, e=NOW + timedelta(hours=1),
                  h='{"phone": "phone", "extra": ["=name"]}')
    for row in (1, 2):
        await execute(repo, "INSERT INTO contacts (campaign_id, row_number, raw_phone, phone, extra, status) "
                            "VALUES (1, :r, :raw, :p, NULL, 'pending')", r=row, raw=f"=61755501{row:02d}",
                      p=f"+161755501{row:02d}")
    response = await admin.get("/console/campaigns/1/export.csv")
    assert response.status == 200 and "attachment" in response.headers["Content-Disposition"]
    await write_export(repo, 1, tmp_path / "cli.csv")
    assert await response.read() == (tmp_path / "cli.csv").read_bytes()


async def test_the_daemons_page_shows_heartbeats(repo, admin):
    await repo.register_worker("host-1-abc", datetime.now(timezone.utc), "host-1", 4242, "0.1.0")
    page = await (await admin.get("/console/daemons")).text()
    assert "host-1-abc" in page and "alive" in page and "4242" in page


async def test_an_upload_over_the_limit_is_refused(repo):
    await add_user(repo, "alice", "admin")
    settings = Settings.model_validate({"console": {"max_upload_bytes": 2048}})
    async with console_client(repo, settings) as client:
        token = await sign_in(client, "alice")
        response = await post_campaign(client, token, form(), b"phone\n" + b"6175550100\n" * 400)
        assert response.status == 413 and "console.max_upload_bytes (2,048 bytes)" in await response.text()
    assert await scalar(repo, "SELECT count(*) FROM campaigns") == 0
