"""Campaign rows written the way an admin writes them: raw SQL through the driver
(sqlite3 and asyncpg, never the ORM), with every time form, another session
time zone, typos, unreadable values and deletions. Each test checks what Plum
(the simulator) received and what the admin sees."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from scheduler.ingest import ingest_campaign
from scheduler.repository import utcnow
from tests.conftest import _migrate, _truncate_pg, repository_at
from tests.support.harness import (
    e164,
    rows,
    running_daemon,
    scalar,
    settings_for,
    simulator,
    valid_numbers,
    wait_for,
    write_contacts,
)

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}
INSERT = ("INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at) "
          "VALUES ('{name}', '77', '3', '{path}', {start}, {end})")


async def admin_sql(db_url: str, *statements: str, time_zone: str | None = None) -> list:
    """Run statements as an admin would in sqlite3 or psql (autocommit); the last one's rows."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        def in_sqlite3() -> list:
            conn = sqlite3.connect(url.database, isolation_level=None)
            try:
                return [conn.execute(sql).fetchall() for sql in statements]
            finally:
                conn.close()

        # In a thread: an admin's sqlite3 is another process; run in this event loop, its busy
        # wait would stall the daemon under test, which then could not finish its transaction.
        return (await asyncio.to_thread(in_sqlite3))[-1]
    conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
    try:
        if time_zone:
            await conn.execute(f"SET TIME ZONE '{time_zone}'")
        result = [await conn.fetch(sql) for sql in statements]
    finally:
        await conn.close()
    return [tuple(r) for r in result[-1]]


def is_sqlite(db_url: str) -> bool:
    return db_url.startswith("sqlite")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    asyncio.run(_migrate(url))
    return url


@pytest.fixture
def postgres_url(pg_url) -> str:
    asyncio.run(_truncate_pg(pg_url))
    return pg_url


@pytest.fixture
async def sqlite_repo(sqlite_url):
    async with repository_at(sqlite_url) as repo:
        yield repo


@pytest.fixture
async def postgres_repo(postgres_url):
    async with repository_at(postgres_url) as repo:
        yield repo


def sql_time(moment: datetime, offset_hours: int = 0) -> str:
    """The instant as text with a UTC offset, e.g. '2026-11-29 23:34:45-05:00'."""
    zone = timezone(timedelta(hours=offset_hours))
    return "'" + moment.astimezone(zone).isoformat(sep=" ", timespec="seconds") + "'"


async def insert_campaign(db_url: str, path, start: str, end: str, name: str = "c", time_zone: str | None = None,
                          **extra: str) -> int:
    sql = INSERT.format(name=name, path=path, start=start, end=end)
    if extra:
        columns, values = ", ".join(extra), ", ".join(extra.values())
        sql = sql.replace(") VALUES (", f", {columns}) VALUES (").replace(f"{end})", f"{end}, {values})")
    await admin_sql(db_url, sql, time_zone=time_zone)
    found = await admin_sql(db_url, f"SELECT max(id) FROM campaigns WHERE name = '{name}'")
    return found[0][0]


# -- time forms ------------------------------------------------------------------

MOMENT = datetime(2026, 12, 1, 14, 0, 0, tzinfo=timezone.utc)

SQLITE_FORMS = [
    ("'2026-12-01 14:00:00'", MOMENT),
    ("'2026-12-01T14:00:00'", MOMENT),
    ("'2026-12-01T14:00:00Z'", MOMENT),
    ("'2026-12-01 09:00:00-05:00'", MOMENT),
    ("'2026-12-01T19:30:00+05:30'", MOMENT),
    ("'2026-12-01 14:00:00.250'", MOMENT + timedelta(milliseconds=250)),
    ("'2026-12-01 14:00'", MOMENT),
    (str(int(MOMENT.timestamp())), MOMENT),
    (f"'{int(MOMENT.timestamp())}'", MOMENT),
    ("' 2026-12-01 14:00:00 '", MOMENT),
]


@pytest.mark.parametrize("written, instant", SQLITE_FORMS)
async def test_sqlite_reads_every_documented_form_as_its_instant(written, instant, tmp_path, sqlite_repo, sqlite_url):
    repo, db_url = sqlite_repo, sqlite_url
    campaign_id = await insert_campaign(db_url, tmp_path / "c.csv", written, "'2027-01-01 00:00:00'")
    row = await repo.get_campaign(campaign_id)
    assert row.start_at == instant
    stored = (await admin_sql(db_url, f"SELECT start_at FROM campaigns WHERE id = {campaign_id}"))[0][0]
    assert stored == instant.strftime("%Y-%m-%d %H:%M:%S.%f")  # canonical UTC text: SQL compares instants
    # an UPDATE is made canonical too
    await admin_sql(db_url, f"UPDATE campaigns SET end_at = {written} WHERE id = {campaign_id}")
    assert (await repo.get_campaign(campaign_id)).end_at == instant


@pytest.mark.parametrize("zone", ["UTC", "Asia/Karachi", "America/Los_Angeles"])
async def test_postgres_session_time_zone_and_offsets_give_the_same_instants(zone, tmp_path, postgres_repo,
                                                                            postgres_url):
    repo, db_url = postgres_repo, postgres_url
    await admin_sql(db_url, INSERT.format(
        name="tz", path=tmp_path / "c.csv", start="'2026-12-01 19:00:00+05:00'", end="now() + interval '1 hour'"),
        time_zone=zone)
    row = (await repo.list_campaigns())[-1]
    assert row.start_at == MOMENT
    assert abs((row.end_at - (utcnow() + timedelta(hours=1))).total_seconds()) < 30
    local = await admin_sql(db_url, f"SELECT start_at::text FROM campaigns WHERE id = {row.id}", time_zone=zone)
    assert local[0][0].startswith(MOMENT.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H"))


async def test_an_offset_end_at_is_honoured_in_sql_and_sent_to_plum(tmp_path, repo, db_url):
    """Issue 11 items 2-3: '... -05:00' four hours ahead once expired every chunk at once (SQLite),
    and PostgreSQL in another session zone stored instants hours off."""
    numbers = valid_numbers(40)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    now = utcnow().replace(microsecond=0)
    end = now + timedelta(hours=4)
    campaign_id = await insert_campaign(db_url, contacts, sql_time(now - timedelta(seconds=5), 5), sql_time(end, -5),
                                        time_zone="Asia/Karachi")
    async with simulator() as sim:
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, campaign_id, FINAL)
    assert done.status == "completed", done.last_error
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers})
    assert {int(r.fields["end_timestamp"]) for r in sim.requests} == {int(end.timestamp())}


# -- plain inserts, typos, unreadable values ------------------------------------------


async def test_minimal_insert_with_documented_columns_runs(tmp_path, repo, db_url):
    numbers = valid_numbers(25)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    now = utcnow()
    campaign_id = await insert_campaign(db_url, contacts, sql_time(now - timedelta(seconds=2)),
                                        sql_time(now + timedelta(hours=1)), name="minimal")
    async with simulator() as sim:
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, campaign_id, FINAL)
    assert done.status == "completed", done.last_error
    assert (done.max_attempts, done.contacts_queued) == (1, 25)
    assert done.created_at is not None and abs((done.created_at - now).total_seconds()) < 30
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers})


@pytest.mark.parametrize("typo", ["Scheduled", " scheduled", "schedule", "RUNNING"])
async def test_a_status_typo_is_named_once_and_never_guessed(typo, tmp_path, repo, db_url, caplog):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(10))
    now = utcnow()
    campaign_id = await insert_campaign(db_url, contacts, sql_time(now - timedelta(seconds=2)),
                                        sql_time(now + timedelta(hours=1)), name="typo", status=f"'{typo}'")
    caplog.set_level(logging.WARNING, logger="scheduler")
    async with simulator() as sim:
        async with running_daemon(settings_for(db_url, sim.base_url)):
            await asyncio.sleep(1.0)  # five polls
            row = await repo.get_campaign(campaign_id)
            assert row.status == typo and sim.stats()["requests"] == 0
            assert row.last_error == f"unknown status {typo!r}: use one of draft, scheduled, paused, cancelled"
            warnings = [r for r in caplog.records if "unknown status" in r.getMessage()]
            assert len(warnings) == 1 and f"campaign {campaign_id}" in warnings[0].getMessage()
            await admin_sql(db_url, f"UPDATE campaigns SET status = 'scheduled' WHERE id = {campaign_id}")
            done = await wait_for(repo, campaign_id, FINAL)
    assert done.status == "completed" and done.contacts_queued == 10
    assert done.last_error is None


BAD_SQLITE_VALUES = [
    ("start_at", "'tomorrow'", "'tomorrow' is not a time"),
    ("start_at", "'1795998031x'", "'1795998031x' is not a time"),
    ("end_at", "'2026-02-30 10:00:00'", "'2026-02-30 10:00:00' is not a time"),
    ("end_at", "'12/01/2026 14:00'", "'12/01/2026 14:00' is not a time"),
    ("max_attempts", "'three'", "max_attempts: must be an integer"),
]


@pytest.mark.parametrize("column, value, message", BAD_SQLITE_VALUES)
async def test_an_unreadable_value_fails_that_campaign_alone(column, value, message, tmp_path, sqlite_repo,
                                                             sqlite_url):
    """PostgreSQL's typed columns refuse these at INSERT; SQLite keeps them as written."""
    repo, db_url = sqlite_repo, sqlite_url
    numbers = valid_numbers(30)
    good = write_contacts(tmp_path / "good.csv", numbers[:20])
    now = utcnow()
    times = {"start": sql_time(now - timedelta(seconds=2)), "end": sql_time(now + timedelta(hours=1))}
    bad_id = await insert_campaign(db_url, write_contacts(tmp_path / "bad.csv", numbers[20:]), **times, name="bad")
    await admin_sql(db_url, f"UPDATE campaigns SET {column} = {value} WHERE id = {bad_id}")
    good_id = await insert_campaign(db_url, good, **times, name="good")
    async with simulator() as sim:
        async with running_daemon(settings_for(db_url, sim.base_url)):
            good_row = await wait_for(repo, good_id, FINAL)
            bad_row = await wait_for(repo, bad_id, FINAL)
    assert good_row.status == "completed" and good_row.contacts_queued == 20
    assert bad_row.status == "failed"
    assert column in bad_row.last_error and message in bad_row.last_error
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers[:20]})


# -- statuses an admin writes mid-run -----------------------------------------------


async def _running_with_sends(repo, db_url, sim, tmp_path, count=400, rate=20.0):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(count))
    now = utcnow()
    campaign_id = await insert_campaign(db_url, contacts, sql_time(now - timedelta(seconds=2)),
                                        sql_time(now + timedelta(hours=1)))
    return campaign_id, settings_for(db_url, sim.base_url, rate_limit_per_second=rate, max_concurrency=2)


async def _wait_requests(sim, count: int) -> None:
    for _ in range(200):
        if sim.stats()["requests"] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the daemon sent nothing")


@pytest.mark.parametrize("how", ["sql_cancelled", "sql_completed", "cli_cancel"])
async def test_stopping_mid_run_settles_every_contact(how, tmp_path, repo, db_url, caplog):
    """Cancel by CLI, by SQL, or an admin writing a daemon-owned final status: unsent chunks
    and their contacts end cancelled, nothing is sent after, nothing twice, one log line."""
    from scheduler.models import CampaignStatus

    caplog.set_level(logging.INFO, logger="scheduler")
    async with simulator() as sim:
        campaign_id, settings = await _running_with_sends(repo, db_url, sim, tmp_path)
        async with running_daemon(settings):
            await _wait_requests(sim, 3)
            if how == "cli_cancel":
                await repo.change_status(campaign_id, CampaignStatus.CANCELLED)
            else:
                await admin_sql(db_url, f"UPDATE campaigns SET status = '{how[4:]}' WHERE id = {campaign_id}")
            await asyncio.sleep(1.0)
            sent = sim.stats()["requests"]
            await asyncio.sleep(0.5)
            assert sim.stats()["requests"] == sent  # nothing after the stop (in-flight ones finished)
        row = await repo.get_campaign(campaign_id)
    assert await scalar(repo, f"SELECT count(*) FROM contacts WHERE campaign_id = {campaign_id} "
                              "AND status = 'pending'") == 0
    by_status = dict(await rows(repo, f"SELECT status, count(*) FROM contacts WHERE campaign_id = {campaign_id} "
                                      "GROUP BY status"))
    assert by_status.get("queued", 0) == len(sim.queued_numbers) == row.contacts_queued
    assert by_status["queued"] + by_status["cancelled"] == 400
    assert max(Counter(sim.queued_numbers).values()) == 1
    lines = [r.getMessage() for r in caplog.records if f"campaign {campaign_id} (c): running ->" in r.getMessage()]
    assert len(lines) == 1, lines


# -- deleting a campaign row -------------------------------------------------------------


async def test_deleting_a_campaign_with_submissions_is_refused(tmp_path, repo, db_url):
    async with simulator() as sim:
        campaign_id, settings = await _running_with_sends(repo, db_url, sim, tmp_path, count=300, rate=10.0)
        async with running_daemon(settings):
            await _wait_requests(sim, 2)
            error = sqlite3.IntegrityError if is_sqlite(db_url) else asyncpg.exceptions.RestrictViolationError
            with pytest.raises(error, match="deleting it would lose its ledger"):
                await admin_sql(db_url, f"DELETE FROM campaigns WHERE id = {campaign_id}")
            await admin_sql(db_url, f"UPDATE campaigns SET status = 'cancelled' WHERE id = {campaign_id}")
            await wait_for(repo, campaign_id, {"cancelled"})
        stats = sim.stats()
    submissions = await scalar(repo, f"SELECT count(*) FROM submissions WHERE campaign_id = {campaign_id}")
    assert submissions == stats["requests"] > 0


async def test_deleting_an_unsent_campaign_removes_its_rows_and_is_logged(tmp_path, repo, db_url, caplog):
    numbers = valid_numbers(50)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    now = utcnow()
    campaign_id = await insert_campaign(db_url, contacts, sql_time(now - timedelta(seconds=2)),
                                        sql_time(now + timedelta(hours=1)), name="gone")
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url)
        row = await repo.claim_campaign(campaign_id, "admin-test", utcnow(), utcnow() + timedelta(minutes=5))
        assert await ingest_campaign(repo, row, settings, "admin-test", utcnow)  # read, nothing sent
        await admin_sql(db_url, f"DELETE FROM campaigns WHERE id = {campaign_id}")
        assert await scalar(repo, f"SELECT count(*) FROM contacts WHERE campaign_id = {campaign_id}") == 0
        assert await scalar(repo, f"SELECT count(*) FROM chunks WHERE campaign_id = {campaign_id}") == 0
        caplog.set_level(logging.WARNING, logger="scheduler")
        async with running_daemon(settings):
            await asyncio.sleep(0.6)  # three polls
        assert sim.stats()["requests"] == 0
    lines = [r.getMessage() for r in caplog.records if "was deleted" in r.getMessage()]
    assert lines == [f"campaign {campaign_id} (gone) was deleted while running: its 5 unsent chunk(s) and "
                     "50 contact row(s) were removed with it and will never be sent; "
                     "nothing of it had been sent to Plum"]


# -- what a first bad-input hunt found ----------------------------------------------------


@pytest.mark.parametrize("end", ["'infinity'", "to_timestamp(1796003266000)", "'10000-01-01 00:00:00+00'"])
async def test_postgres_refuses_times_no_client_can_read(end, tmp_path, postgres_url):
    """A Unix time in milliseconds by mistake once stopped every tick of every daemon (OverflowError)."""
    with pytest.raises(asyncpg.exceptions.CheckViolationError, match="ck_campaigns_times_in_range"):
        await admin_sql(postgres_url, INSERT.format(name="far", path=tmp_path / "c.csv", start="now()", end=end))


async def test_sqlite_never_gives_a_deleted_campaigns_id_to_a_new_row(tmp_path, sqlite_repo, sqlite_url):
    first = await insert_campaign(sqlite_url, tmp_path / "a.csv", "'2030-01-01'", "'2030-01-02'", name="a")
    await admin_sql(sqlite_url, f"DELETE FROM campaigns WHERE id = {first}")
    second = await insert_campaign(sqlite_url, tmp_path / "b.csv", "'2030-01-01'", "'2030-01-02'", name="b")
    assert second > first


@pytest.mark.parametrize("value", ["'2026-13-45 10:00:00.000000'", "'2026-11-30 99:00:00.000000'",
                                   "'2031-02-30 10:00:00.000000'"])
async def test_an_impossible_but_well_shaped_time_mid_run_stops_sending_cleanly(value, tmp_path, sqlite_repo,
                                                                               sqlite_url):
    """Such a value once passed the SQL shape check: chunks were claimed, the sender crashed on
    them, and they ended `unknown` although nothing had been sent."""
    repo = sqlite_repo
    async with simulator() as sim:
        campaign_id, settings = await _running_with_sends(repo, sqlite_url, sim, tmp_path, count=300, rate=20.0)
        async with running_daemon(settings):
            await _wait_requests(sim, 2)
            await admin_sql(sqlite_url, f"UPDATE campaigns SET end_at = {value} WHERE id = {campaign_id}")
            row = await wait_for(repo, campaign_id, FINAL)
        sent = sim.stats()["requests"]
    assert row.status == "failed" and value.strip("'") in row.last_error
    stuck = await scalar(repo, f"SELECT count(*) FROM chunks WHERE campaign_id = {campaign_id} "
                               "AND status IN ('submitting', 'unknown')")
    assert stuck == 0
    assert await scalar(repo, f"SELECT count(*) FROM submissions WHERE campaign_id = {campaign_id}") == sent


async def test_insert_or_replace_on_a_sent_campaign_keeps_its_ledger(tmp_path, sqlite_repo, sqlite_url):
    """SQLite's REPLACE deletes without firing delete triggers; ingestion then once wiped the old ledger."""
    repo = sqlite_repo
    async with simulator() as sim:
        campaign_id, settings = await _running_with_sends(repo, sqlite_url, sim, tmp_path, count=30, rate=50.0)
        async with running_daemon(settings):
            await wait_for(repo, campaign_id, FINAL)
            now = utcnow()
            await admin_sql(sqlite_url, f"INSERT OR REPLACE INTO campaigns (id, name, survey_id, instance_id, "
                                        f"contacts_path, start_at, end_at) VALUES ({campaign_id}, 'replaced', '9', "
                                        f"'9', '{tmp_path / 'c.csv'}', {sql_time(now)}, "
                                        f"{sql_time(now + timedelta(hours=1))})")
            row = await wait_for(repo, campaign_id, {"failed"})
        requests = sim.stats()["requests"]
    assert "already has 3 submission(s) to Plum from an earlier row" in row.last_error
    assert await scalar(repo, f"SELECT count(*) FROM submissions WHERE campaign_id = {campaign_id}") == requests == 3
    assert await scalar(repo, f"SELECT count(*) FROM contacts WHERE campaign_id = {campaign_id} "
                              "AND status = 'queued'") == 30


async def test_a_ledger_that_does_not_add_up_when_final_is_an_error_not_a_quiet_finish(tmp_path, repo, db_url,
                                                                                     caplog):
    caplog.set_level(logging.ERROR, logger="scheduler")
    async with simulator() as sim:
        campaign_id, settings = await _running_with_sends(repo, db_url, sim, tmp_path, count=200, rate=20.0)
        async with running_daemon(settings):
            await _wait_requests(sim, 2)
            await admin_sql(db_url, f"UPDATE campaigns SET contacts_total = 999 WHERE id = {campaign_id}")
            await wait_for(repo, campaign_id, FINAL)
            for _ in range(50):  # the check runs in the tick after the finish
                row = await repo.get_campaign(campaign_id)
                if row.last_error:
                    break
                await asyncio.sleep(0.1)
    assert row.status == "completed"
    assert row.last_error.startswith("the ledger does not add up (run `campaign verify`): contacts_total is 999")
    errors = [r.getMessage() for r in caplog.records if "does not add up" in r.getMessage()]
    assert len(errors) == 1 and f"campaign {campaign_id}:" in errors[0]
