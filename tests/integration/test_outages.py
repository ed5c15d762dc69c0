"""Riding out outages with the real daemon, on both databases: Plum failing every request
(the circuit breaker), Retry-After holding the account, a campaign ending during an outage,
a SQLite file locked by an admin beyond the busy timeout, and unknown chunks reconciled by
call results. PostgreSQL restarts are in test_database_outage.py (their own cluster)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import aiohttp

from scheduler import db
from scheduler.config import Settings
from scheduler.reports import plum_state
from tests.support.pg_cluster import free_port
from tests.support.harness import (
    campaign,
    e164,
    execute,
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
FAST_PROBES = dict(failure_threshold=3, initial_probe_interval_seconds=0.2, max_probe_interval_seconds=0.5)


def with_sections(settings: Settings, **sections: dict) -> Settings:
    data = settings.model_dump(mode="json")
    data["insight"]["developer_key"] = "right-key"
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return Settings.model_validate(data)


async def test_plum_down_for_a_while_then_back_completes_with_no_chunk_failed(repo, db_url, tmp_path, caplog):
    numbers = valid_numbers(200)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    caplog.set_level(logging.INFO, logger="scheduler")
    async with simulator(outage_status=503, outage_seconds=2.5) as sim:
        # max_tries 2: without the breaker, the outage would fail every chunk it touches
        settings = settings_for(db_url, sim.base_url, chunk_size=10, rate_limit_per_second=20, max_concurrency=2,
                                retry=dict(max_tries=2, initial_backoff_seconds=0.05, max_backoff_seconds=0.1),
                                outage=FAST_PROBES)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            seen_open = None
            deadline = time.monotonic() + 30
            while (await repo.get_campaign(row.id)).status not in FINAL and time.monotonic() < deadline:
                state = plum_state(await repo.plum_accounts(), "%s you@yourdomain.com" % sim.base_url)
                seen_open = seen_open or state
                await asyncio.sleep(0.05)
            done = await wait_for(repo, row.id, FINAL)
        stats = sim.stats()
    assert done.status == "completed", done.last_error
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers})
    chunks = dict(await rows(repo, "SELECT status, count(*) FROM chunks GROUP BY status"))
    assert chunks == {"succeeded": 20}
    # the breaker opened after 3 failures in a row; then only probes, 0.2 s then up to 0.5 s apart
    assert 3 <= stats["requests_during_outage"] <= 3 + 2 + 8, stats
    assert stats["first_accepted_after_outage"] - stats["outage_ended_at"] <= 0.5 + 0.3
    assert await scalar(repo, "SELECT max(outage_tries) FROM chunks") >= 1
    recorded = dict(await rows(repo, "SELECT status_code, count(*) FROM submissions GROUP BY status_code"))
    assert recorded == {int(code): n for code, n in stats["by_status"].items()}
    assert seen_open is not None and seen_open.startswith("waiting for Plum since ") and "probes)" in seen_open
    [account] = await repo.plum_accounts()
    assert (account.breaker, account.outages, account.open_since) == ("closed", 1, None)
    lines = [r.getMessage() for r in caplog.records if "circuit breaker" in r.getMessage()]
    assert len([t for t in lines if "circuit breaker OPEN" in t]) == 1, lines
    assert len([t for t in lines if "circuit breaker CLOSED" in t]) == 1, lines
    assert "HTTP 503" in lines[0] and "probes sent" in lines[-1]


async def test_retry_after_on_a_503_holds_every_request_of_the_account(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(40))
    async with simulator(outage_status=503, outage_seconds=0.05, outage_retry_after_seconds=2) as sim:
        settings = settings_for(db_url, sim.base_url, chunk_size=10, rate_limit_per_second=50, max_concurrency=1,
                                outage=dict(failure_threshold=100))
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL)
        requests = list(sim.requests)
    assert done.status == "completed", done.last_error
    assert requests[0].status == 503
    # the next request of any chunk waited for Plum's Retry-After (2 s), not the 0.05 s backoff
    assert requests[1].started - requests[0].started >= 1.9


async def test_a_campaign_ending_during_an_outage_expires_its_chunks_naming_the_outage(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(50))
    async with simulator(outage_status=500, outage_seconds=60) as sim:
        settings = settings_for(db_url, sim.base_url, chunk_size=10, rate_limit_per_second=20, outage=FAST_PROBES)
        now = datetime.now(timezone.utc)
        row = await repo.create_campaign(campaign(contacts, end_at=now + timedelta(seconds=5)))
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL, timeout=20)
    assert done.status == "completed_with_errors"
    found = await rows(repo, "SELECT status, last_error FROM chunks")
    assert {status for status, _ in found} == {"expired"}
    assert all("Plum unavailable since" in error for _, error in found), found
    assert await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'failed'") == 0


async def test_a_sqlite_file_locked_longer_than_the_busy_timeout_loses_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    url = f"sqlite+aiosqlite:///{tmp_path / 'locked.db'}"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    await engine.dispose()
    from tests.conftest import repository_at

    numbers = valid_numbers(300)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    caplog.set_level(logging.INFO, logger="scheduler")
    async with repository_at(url) as repo, simulator(latency_mean_seconds=0.2) as sim:
        settings = settings_for(url, sim.base_url, chunk_size=10, rate_limit_per_second=20, max_concurrency=4)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            while len(sim.requests) < 5:
                await asyncio.sleep(0.02)
            released = threading.Event()

            def admin_holds_the_lock() -> None:  # an admin's sqlite3 shell: BEGIN EXCLUSIVE, then coffee
                conn = sqlite3.connect(tmp_path / "locked.db", timeout=5, isolation_level=None)
                conn.execute("BEGIN EXCLUSIVE")
                released.wait(2.0)
                conn.execute("ROLLBACK")
                conn.close()

            holder = threading.Thread(target=admin_holds_the_lock)
            holder.start()
            await asyncio.sleep(2.0)
            released.set()
            holder.join()
            done = await wait_for(repo, row.id, FINAL, timeout=40)
        stats = sim.stats()
    assert done.status == "completed", done.last_error
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers})
    assert await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'unknown'") == 0
    recorded = dict(await rows(repo, "SELECT status_code, count(*) FROM submissions GROUP BY status_code"))
    assert recorded == {200: stats["by_status"]["200"]}
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("database unreachable") and "locked" in m for m in messages), messages
    assert any(m.startswith("database reachable again") for m in messages)


async def test_a_call_result_on_an_unknown_chunk_reconciles_it(repo, db_url, tmp_path):
    numbers = valid_numbers(30)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    # Plum queues every chunk, then drops the connection before answering: each is unknown
    # until its call results arrive on its signed result_url.
    async with simulator(drop_rate=1.0, callback_delay_seconds=0.3) as sim:
        base = settings_for(db_url, sim.base_url, chunk_size=10, rate_limit_per_second=20)
        port = free_port()
        settings = with_sections(base, callbacks=dict(listen=f"127.0.0.1:{port}",
                                                      public_url=f"http://127.0.0.1:{port}", secret="s3cret"))
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            await wait_for(repo, row.id, FINAL, timeout=30)  # completed_with_errors: 3 unknown ...
            done = await wait_for(repo, row.id, {"completed"}, timeout=30)  # ... until the call results came
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    ready = await response.json()
        report = await repo.campaign_report(row.id)
    assert done.last_error == "its unknown chunks were all reconciled from call results"
    assert done.contacts_queued == 30
    assert report.submissions_by_outcome == {"unknown": 3, "reconciled": 3}
    assert report.chunks_by_status == {"succeeded": 3}
    notes = await rows(repo, "SELECT error FROM submissions WHERE outcome = 'reconciled'")
    assert all("a call result arrived on this chunk's result_url" in note for (note,) in notes)
    assert await repo.verify_campaign(row.id) == []
    assert ready["ready"] is True and ready["plum"] in ("accepting", "waiting")


async def test_an_unknown_chunk_without_a_call_result_is_never_resent(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(20))
    async with simulator(drop_rate=1.0) as sim:
        settings = settings_for(db_url, sim.base_url, chunk_size=10, rate_limit_per_second=20)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL)
            await asyncio.sleep(1.0)
        requests = len(sim.requests)
    assert done.status == "completed_with_errors"
    assert requests == 2
    assert await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'unknown'") == 2


async def test_admin_sql_does_not_need_the_new_columns(repo, db_url, tmp_path):
    """outage_tries and plum_accounts are the daemon's: an admin's plain INSERT still runs."""
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(10))
    await execute(repo, "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at, "
                        "max_attempts, status) VALUES ('plain', '77', '3', :path, :start, :end, 1, 'scheduled')",
                  path=str(contacts), start=datetime.now(timezone.utc) - timedelta(seconds=1),
                  end=datetime.now(timezone.utc) + timedelta(hours=1))
    async with simulator() as sim:
        async with running_daemon(settings_for(db_url, sim.base_url)):
            [(campaign_id,)] = await rows(repo, "SELECT id FROM campaigns")
            done = await wait_for(repo, campaign_id, FINAL)
    assert done.status == "completed"
