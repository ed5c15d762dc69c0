"""The database going away mid-campaign. PostgreSQL tests run their own temporary cluster
(initdb in a temp dir, a free port, pg_ctl stop/start), never the shared server on 5432.

Ground truth on both sides: every 200 Plum (the simulator) gave is a 200 in `submissions`,
no chunk is `unknown`, no number is queued twice, every contact is accounted for.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections import Counter

import aiohttp
import pytest

from scheduler import db
from scheduler.config import Settings
from scheduler.errors import DatabaseError
from tests.conftest import repository_at
from tests.e2e.test_daemon_process import start_daemon, write_config
from tests.support import pg_cluster
from tests.support.harness import (
    campaign, e164, rows, running_daemon, scalar, settings_for, simulator, valid_numbers, write_contacts,
)

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


@pytest.fixture
def cluster(tmp_path):
    if not pg_cluster.available():
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are required: apt-get install postgresql")
    with pg_cluster.TempPostgres(tmp_path) as server:
        yield server


async def migrated(url: str) -> None:
    engine = db.create_engine(url)
    await db.upgrade(engine)
    await engine.dispose()


async def wait_through_outages(repo, campaign_id: int, statuses: set[str], timeout: float = 60.0):
    """wait_for that tolerates the database being down meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            row = await repo.get_campaign(campaign_id)
            if row.status in statuses:
                return row
        except DatabaseError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"campaign {campaign_id} did not become {statuses}")


async def ground_truth(repo, sim, numbers) -> dict:
    stats = sim.stats()
    recorded = dict(await rows(repo, "SELECT status_code, count(*) FROM submissions GROUP BY status_code"))
    assert recorded.get(200, 0) == stats["by_status"].get("200", 0), (recorded, stats["by_status"])
    assert await scalar(repo, "SELECT count(*) FROM chunks WHERE status IN ('unknown', 'submitting')") == 0
    assert await scalar(repo, "SELECT count(*) FROM submissions WHERE outcome = 'sending'") == 0
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers})
    return stats


async def test_postgresql_restarting_mid_campaign_loses_no_answer(cluster, tmp_path, caplog):
    url = cluster.create_database("outage")
    await migrated(url)
    numbers = valid_numbers(400)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    caplog.set_level("INFO", logger="scheduler")
    port = pg_cluster.free_port()
    async with repository_at(url) as repo, simulator(latency_mean_seconds=0.4) as sim:
        settings = settings_for(url, sim.base_url, chunk_size=10, rate_limit_per_second=10, max_concurrency=4)
        settings = Settings.model_validate({**settings.model_dump(mode="json"),
                                            "insight": {**settings.insight.model_dump(mode="json"),
                                                        "developer_key": "right-key"},
                                            "callbacks": {"listen": f"127.0.0.1:{port}"}})
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            while len(sim.requests) < 8:
                await asyncio.sleep(0.02)
            cluster.stop("fast")  # requests are in flight: their answers come while it is down
            await asyncio.sleep(3.0)
            during = len(sim.requests)
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
                ready = (response.status, await response.json())
            cluster.restart()
            back = time.time()
            done = await wait_through_outages(repo, row.id, FINAL)
        stats = await ground_truth(repo, sim, numbers)
    assert done.status == "completed", done.last_error
    first_after = min(r.started for r in sim.requests if r.started >= back)
    assert first_after - back <= 2 * settings.scheduler.poll_interval_seconds + 1.0  # resumes within 2 polls
    assert during <= 8 + 4  # nothing new was claimed while it was down (what was in flight at most)
    assert ready[0] == 503 and any(p.startswith("database unreachable") for p in ready[1]["problems"]), ready
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("database unreachable") for m in messages)
    assert any(m.startswith("database reachable again") for m in messages)
    print(f"postgresql restart: {stats['requests']} requests, {stats['by_status']}, resumed "
          f"{first_after - back:.2f} s after the restart")


async def test_kill_9_while_postgresql_is_down_then_restart_applies_the_journal(cluster, tmp_path):
    url = cluster.create_database("journal")
    await migrated(url)
    numbers = valid_numbers(200)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    journal = tmp_path / "outcomes.journal"
    async with repository_at(url) as repo, simulator(latency_mean_seconds=1.0) as sim:
        config = write_config(tmp_path / "config.yaml", url, sim.base_url, None, rate_limit_per_second=20)
        config.write_text(config.read_text() + f"  journal_path: {journal}\n")
        row = await repo.create_campaign(campaign(contacts))
        proc = await start_daemon(config, tmp_path / "daemon.log")
        try:
            while len(sim.requests) < 4:
                await asyncio.sleep(0.01)
            cluster.stop("immediate")  # the four requests in flight are answered after this
            while sum(1 for r in sim.requests if r.status) < 4:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # the daemon finds the database gone and journals the answers
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        kept = journal.read_text().splitlines()
        answered = sum(1 for r in sim.requests if r.status == 200)
        cluster.restart()
        proc = await start_daemon(config, tmp_path / "daemon.log")
        try:
            done = await wait_through_outages(repo, row.id, FINAL)
        finally:
            proc.terminate()
            await proc.wait()
        await ground_truth(repo, sim, numbers)
    log = (tmp_path / "daemon.log").read_text()
    assert done.status == "completed", (done.last_error, log[-3000:])
    assert len(kept) >= answered >= 4, kept
    assert f"answer(s) from the journal {journal}" in log
    assert not journal.exists() or journal.read_text() == ""


async def test_stopping_while_sqlite_is_locked_keeps_answers_in_the_journal_for_the_next_start(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    await migrated(url)
    numbers = valid_numbers(100)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    caplog.set_level("INFO", logger="scheduler")
    async with repository_at(url) as repo, simulator(latency_mean_seconds=0.5) as sim:
        settings = settings_for(url, sim.base_url, chunk_size=10, rate_limit_per_second=20, max_concurrency=4)
        row = await repo.create_campaign(campaign(contacts))
        release = threading.Event()
        locked = threading.Event()

        def admin_lock() -> None:
            conn = sqlite3.connect(tmp_path / "c.db", timeout=5, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(30)
            conn.execute("ROLLBACK")
            conn.close()

        holder = threading.Thread(target=admin_lock)
        async with running_daemon(settings):
            while len(sim.requests) < 4:
                await asyncio.sleep(0.01)
            holder.start()
            locked.wait(5)
            while sum(1 for r in sim.requests if r.status) < 4:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
        # the daemon stopped with the file still locked: its answers are in the journal
        journal = tmp_path / "c.db.outcomes.journal"
        assert journal.read_text().count("\n") >= 4
        release.set()
        holder.join()
        async with running_daemon(settings):
            done = await wait_through_outages(repo, row.id, FINAL)
        await ground_truth(repo, sim, numbers)
    assert done.status == "completed", done.last_error
    messages = [r.getMessage() for r in caplog.records]
    assert any("kept in the journal" in m for m in messages)
    assert any("from the journal" in m and "before claiming anything" in m for m in messages)


async def test_postgresql_going_away_during_ingestion_restarts_it_cleanly(cluster, tmp_path, caplog):
    url = cluster.create_database("ingest")
    await migrated(url)
    numbers = valid_numbers(20_000, seed=7)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    caplog.set_level("INFO", logger="scheduler")
    async with repository_at(url) as repo, simulator() as sim:
        settings = settings_for(url, sim.base_url, chunk_size=500, rate_limit_per_second=50, max_concurrency=4)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            while True:  # contacts are being written, the campaign is not ingested yet
                try:
                    if await scalar(repo, "SELECT count(*) FROM contacts") > 0:
                        break
                except DatabaseError:
                    pass
                await asyncio.sleep(0.005)
            cluster.stop("immediate")
            await asyncio.sleep(2.0)
            cluster.restart()
            done = await wait_through_outages(repo, row.id, FINAL, timeout=90)
        await ground_truth(repo, sim, numbers)
    assert done.status == "completed", done.last_error
    assert (done.contacts_valid, done.contacts_queued) == (20_000, 20_000)
    assert await scalar(repo, "SELECT count(*) FROM contacts") == 20_000
