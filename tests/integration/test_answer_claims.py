"""SQLite: when every place in flight is taken, the transaction that writes an answer also claims
the next chunk (ledger.record_then_claim). Nothing of the answer may be lost to it, and a claim
made that way while the daemon stops is given back unsent, never left to turn `unknown`."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from scheduler import db, ledger
from scheduler.insight import SubmitResult
from scheduler.ledger import AccountLimits, ClaimTimes, NextClaim
from scheduler.models import Outcome
from scheduler.outbox import LedgerWrite
from scheduler.repository import Repository
from scheduler.retry import NextStep, Step
from tests.support.harness import (campaign, e164, rows, running_daemon, settings_for, simulator, valid_numbers, wait_for,
                                   write_contacts)

NOW = datetime.now(timezone.utc).replace(microsecond=0)


async def sqlite_repo(path):
    url = f"sqlite+aiosqlite:///{path}"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    return url, Repository(engine)


async def test_with_every_place_taken_each_answer_claims_the_next_chunk(tmp_path, monkeypatch):
    made = Counter()
    record_then_claim = ledger.record_then_claim

    def counted(*args, **kwargs):
        applied, claims = record_then_claim(*args, **kwargs)
        made["claims"] += len(claims) if isinstance(claims, list) else 0
        return applied, claims

    monkeypatch.setattr(ledger, "record_then_claim", counted)
    url, repo = await sqlite_repo(tmp_path / "l.db")
    numbers = valid_numbers(50)
    async with simulator(latency_mean_seconds=0.02) as sim:
        row = await repo.create_campaign(campaign(write_contacts(tmp_path / "c.csv", numbers)))
        async with running_daemon(settings_for(url, sim.base_url, max_concurrency=1, rate_limit_per_second=1000)):
            done = await wait_for(repo, row.id, {"completed"})
        queued = Counter(n for r in sim.requests for n in r.numbers)
    await repo.close()
    assert done.status == "completed"
    assert sorted(queued) == sorted(e164(n) for n in numbers) and set(queued.values()) == {1}  # each once
    assert len(sim.requests) == 5
    assert made["claims"] >= 3  # chunks 2-5 (the loop may take one itself, e.g. after a tick)


async def test_an_answer_is_written_even_when_claiming_with_it_fails(tmp_path, caplog):
    url, repo = await sqlite_repo(tmp_path / "l.db")
    row = await repo.create_campaign(campaign(write_contacts(tmp_path / "c.csv", valid_numbers(20))))
    from tests.support.harness import claim_for_ingestion
    from scheduler.config import Settings
    from scheduler.ingest import ingest_campaign
    row = await claim_for_ingestion(repo, row)
    assert await ingest_campaign(repo, row, Settings.model_validate({"submission": {"chunk_size": 10}}), "w",
                                 lambda: NOW)
    times = ClaimTimes(now=NOW, lease_until=NOW + timedelta(minutes=2), opens_by=NOW, open_until=NOW)
    claim = await repo.claim_next_chunk("w", times)
    broken = NextClaim("w", None, 0, None, AccountLimits("acct", 0.01, 4), most=1)  # type: ignore[arg-type]
    write = LedgerWrite("record", claim, NOW, SubmitResult(Outcome.ACCEPTED, 200, None, "{}", 0.1),
                        NextStep(Step.SUCCEEDED), "w")
    with caplog.at_level(logging.ERROR, logger="scheduler.outbox"):
        applied, claims = await write.apply(repo, broken)
    assert applied == NextStep(Step.SUCCEEDED) and claims == []
    assert "the answer is written alone" in caplog.text
    assert await rows(repo, "SELECT seq, status FROM chunks ORDER BY seq") == [(0, "succeeded"), (1, "pending")]
    await repo.close()


@pytest.mark.parametrize("grace", [5.0, 0.2], ids=["answer-written-within-grace", "answer-cancelled"])
async def test_a_chunk_claimed_with_an_answer_while_stopping_is_given_back(tmp_path, grace):
    """The answer arrives while an admin's sqlite3 session holds the lock; the daemon is told
    to stop; the lock goes: the answer's transaction commits with the next chunk claimed, and
    that chunk goes back to pending (no request, no `sending` row, nothing `unknown`)."""
    path = tmp_path / "l.db"
    url, repo = await sqlite_repo(path)
    async with simulator(latency_mean_seconds=0.3) as sim:
        row = await repo.create_campaign(campaign(write_contacts(tmp_path / "c.csv", valid_numbers(30))))
        settings = settings_for(url, sim.base_url, max_concurrency=1, rate_limit_per_second=1000)
        settings.scheduler.shutdown_grace_seconds = grace
        admin = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        async with running_daemon(settings) as daemon:
            while not sim.requests:
                await asyncio.sleep(0.01)
            admin.execute("BEGIN IMMEDIATE")  # before the answer (0.3 s): its write waits
            await asyncio.sleep(0.5)
            release = threading.Timer(1.0, admin.execute, ("COMMIT",))
            release.start()
            daemon.request_stop()
        release.join()
        admin.close()
        sent = len(sim.requests)
    chunks = await rows(repo, "SELECT seq, status, lease_owner FROM chunks ORDER BY seq")
    submissions = await rows(repo, "SELECT chunk_id, outcome FROM submissions")
    await repo.close()
    assert sent == 1
    assert chunks == [(0, "succeeded", None), (1, "pending", None), (2, "pending", None)], chunks
    assert [outcome for _, outcome in submissions] == ["accepted"]
