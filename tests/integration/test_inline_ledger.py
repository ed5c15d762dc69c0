"""SQLite: the send path's short transactions run on the event loop (repository._Store._inline)
when the database's lock is free, and in the ledger thread, which waits for it, when another
process holds it; the event loop never waits for SQLite's lock, and the WAL is still
checkpointed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from scheduler import db
from scheduler.config import Settings
from scheduler.ingest import ingest_campaign
from scheduler.insight import SubmitResult
from scheduler.ledger import ClaimTimes
from scheduler.models import Outcome
from scheduler.repository import CHECKPOINT_EVERY_COMMITS, INLINE_BUDGET_SECONDS
from scheduler.retry import NextStep, Step
from tests.conftest import repository_at
from tests.support.harness import campaign, claim_for_ingestion, rows, valid_numbers, write_contacts

NOW = datetime.now(timezone.utc).replace(microsecond=0)
TIMES = ClaimTimes(now=NOW, lease_until=NOW + timedelta(minutes=2), opens_by=NOW, open_until=NOW)
HOLD_SECONDS = 0.4


@asynccontextmanager
async def ledger_at(path: Path):
    url = f"sqlite+aiosqlite:///{path}"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    await engine.dispose()
    async with repository_at(url) as repo:
        yield repo


async def ingested(repo, tmp_path: Path, count: int = 20):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(count))
    row = await claim_for_ingestion(repo, await repo.create_campaign(campaign(contacts, chunk_size=10)))
    assert await ingest_campaign(repo, row, Settings(), "w", lambda: NOW)
    return row


async def while_an_admin_holds_the_lock(path: Path, work):
    """Run `work` while an admin's sqlite3 session holds the write lock for HOLD_SECONDS; return
    its result, how long it took, and how often the event loop ran meanwhile."""
    admin = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    admin.execute("BEGIN IMMEDIATE")
    admin.execute("UPDATE campaigns SET name = name")  # an admin's edit, not committed yet
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.ensure_future(ticker())
    release = threading.Timer(HOLD_SECONDS, admin.execute, ("COMMIT",))
    release.start()
    started = asyncio.get_running_loop().time()
    try:
        result = await work()
    finally:
        elapsed = asyncio.get_running_loop().time() - started
        beat.cancel()
        release.join()
        admin.close()
    return result, elapsed, ticks


async def test_a_claim_and_its_answer_wait_for_an_admins_lock_without_stopping_the_loop(tmp_path):
    path = tmp_path / "ledger.db"
    async with ledger_at(path) as repo:
        row = await ingested(repo, tmp_path)
        claim, elapsed, ticks = await while_an_admin_holds_the_lock(path, lambda: repo.claim_next_chunk("w", TIMES))
        assert claim is not None and claim.campaign_id == row.id
        assert elapsed >= HOLD_SECONDS * 0.9  # it waited for the lock ...
        assert ticks >= 10  # ... in the ledger thread: the loop kept running (~40 ticks of 10 ms)

        answer = SubmitResult(Outcome.ACCEPTED, 200, None, "{}", 0.01)
        applied, elapsed, ticks = await while_an_admin_holds_the_lock(
            path, lambda: repo.record_outcome(claim, "w", answer, NextStep(Step.SUCCEEDED), NOW))
        assert applied == NextStep(Step.SUCCEEDED)
        assert elapsed >= HOLD_SECONDS * 0.9 and ticks >= 10
        assert await rows(repo, "SELECT status, count(*) FROM chunks GROUP BY status ORDER BY status") == [
            ("pending", 1), ("succeeded", 1)]
        assert await rows(repo, "SELECT outcome FROM submissions") == [("accepted",)]


async def test_with_the_lock_free_they_run_on_the_event_loop(tmp_path):
    async with ledger_at(tmp_path / "ledger.db") as repo:
        await ingested(repo, tmp_path)
        seen = []
        await repo._ledger(lambda conn: seen.append(threading.get_ident()), inline=True)
        await repo._ledger(lambda conn: seen.append(threading.get_ident()))
        assert seen == [threading.get_ident(), seen[1]] and seen[1] != threading.get_ident()


async def test_the_wal_is_checkpointed_though_the_event_loops_connection_never_does(tmp_path):
    """Without the ledger thread's checkpoints the WAL would hold every commit's pages (4 MB and
    more here); with them it is reused after each."""
    path = tmp_path / "ledger.db"
    async with ledger_at(path) as repo:
        await repo.register_worker("w", NOW, "host", 1, "test")
        await repo._ledger(lambda conn: None)  # the ledger thread's connection exists
        commits = 10 * CHECKPOINT_EVERY_COMMITS
        for i in range(commits):
            await repo.heartbeat("w", NOW + timedelta(seconds=i))
            if i % CHECKPOINT_EVERY_COMMITS == 0:
                await asyncio.sleep(0.01)  # (a daemon's loop is never this busy: let the thread run)
        wal_pages = (tmp_path / "ledger.db-wal").stat().st_size // 4096
        assert wal_pages < commits / 3, f"the WAL grew to {wal_pages} pages for {commits} commits"
        assert await rows(repo, "SELECT last_tick_at FROM workers") != []


async def test_a_transaction_over_its_budget_on_the_event_loop_goes_to_the_ledger_thread(tmp_path):
    """A long transaction (a huge suppression list, say) must not hold the event loop: SQLite
    interrupts it at the budget, it is rolled back and run again in the ledger thread, and that
    function stays there for a while."""
    async with ledger_at(tmp_path / "ledger.db") as repo:
        await repo.register_worker("w", NOW, "host", 1, "test")
        ran_in: list[int] = []

        def heavy(conn):
            ran_in.append(threading.get_ident())
            conn.exec_driver_sql("UPDATE workers SET pid = pid + 1")  # undone if interrupted
            return conn.exec_driver_sql(  # ~10^6 rows of SQLite work: far over the budget
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) "
                "SELECT count(*) FROM n").scalar()

        loop = asyncio.get_running_loop()
        started = loop.time()
        stalls: list[float] = []

        async def watch():
            while True:
                before = loop.time()
                await asyncio.sleep(0.002)
                stalls.append(loop.time() - before - 0.002)

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0.01)
        assert await repo._ledger(heavy, inline=True) == 1000000
        again = await repo._ledger(heavy, inline=True)  # within the cooldown: straight to the thread
        watcher.cancel()
        assert again == 1000000
        me = threading.get_ident()
        assert ran_in[0] == me and ran_in[1] != me and ran_in[2] != me, ran_in
        assert max(stalls) < INLINE_BUDGET_SECONDS + 0.1, max(stalls)
        assert await rows(repo, "SELECT pid FROM workers") == [(3,)]  # the interrupted update left nothing
        assert loop.time() - started < 30
