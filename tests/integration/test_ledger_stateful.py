"""The ledger driven through the Repository in random interleavings, on SQLite and PostgreSQL.

Each rule is something a daemon, a second daemon or an admin does. After every
step the invariants of scheduler/verify.py hold for every ingested campaign;
after a housekeeping pass (the daemon's tick) also the counters of final ones.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text, update

from scheduler import db, windows
from scheduler.config import Settings
from scheduler.errors import UserError
from scheduler.ingest import ingest_campaign, recent_since
from scheduler.insight import SubmitResult
from scheduler.ledger import ClaimedChunk, ClaimTimes
from scheduler.models import Base, Campaign, CampaignStatus, Contact, ContactStatus, Outcome
from scheduler.repository import Repository, WindowMove
from scheduler.retry import next_step
from scheduler.verify import campaign_discrepancies
from tests.support.harness import campaign, e164, valid_numbers, write_contacts

WORKERS = ("a", "b")  # "b" is a second daemon on the same database
# Few numbers, shared by every campaign: duplicates, suppressions and the frequency cap cross campaigns.
NUMBERS = valid_numbers(8, seed=11)
STEP = timedelta(seconds=10)
LEASE = timedelta(seconds=90)
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
RESULTS = {
    "accepted": SubmitResult(Outcome.ACCEPTED, 200, None, '{"success":true}', 0.01),
    "retryable": SubmitResult(Outcome.RETRYABLE, 500, "HTTP 500", None, 0.01),
    "throttled": SubmitResult(Outcome.RETRYABLE, 503, "HTTP 503", None, 0.01, retry_after_seconds=5),
    "rejected": SubmitResult(Outcome.REJECTED, 400, "invalid phone number", None, 0.01),
    "unknown": SubmitResult(Outcome.UNKNOWN, None, "read timeout", None, 3.0),
    "auth_401": SubmitResult(Outcome.AUTH, 401, "HTTP 401", None, 0.01),
    "auth_403": SubmitResult(Outcome.AUTH, 403, "HTTP 403", None, 0.01),
    "campaign_invalid": SubmitResult(Outcome.CAMPAIGN_INVALID, 404, "survey not found", None, 0.01),
    "client_bug": SubmitResult(Outcome.CLIENT_BUG, 400, "start_timestamp must be a Unix timestamp", None, 0.01),
}
# CI runs the same 25 per database every time (derandomized: a landing never depends on luck);
# INSIGHT_STATEFUL_EXAMPLES=400 runs a longer, random search.
MAX_EXAMPLES = int(os.environ.get("INSIGHT_STATEFUL_EXAMPLES", "25"))
DERANDOMIZE = "INSIGHT_STATEFUL_EXAMPLES" not in os.environ
EXAMPLES_RUN: dict[str, int] = {}


class LedgerMachine(RuleBasedStateMachine):
    """One example: a fresh database, two daemons' claims in flight, an admin at the controls."""

    database = ""  # "sqlite" or "postgres", with url and workdir: set per test
    url = ""
    workdir = Path()

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        url = self.run(fresh_database(self.database, self.url, self.workdir))
        self.repo = Repository(db.create_engine(url))
        self.settings = machine_settings(url)
        self.now = datetime.now(timezone.utc)
        self.started = self.now
        self.campaigns: list[int] = []
        self.claims: list[tuple[str, ClaimedChunk]] = []
        self.housekept = False
        EXAMPLES_RUN[self.database] = EXAMPLES_RUN.get(self.database, 0) + 1

    def run(self, awaitable):
        return self.loop.run_until_complete(awaitable)

    def advance(self) -> datetime:
        self.now += STEP
        return self.now

    def teardown(self) -> None:
        self.run(self.repo.close())
        self.loop.close()

    # -- daemons ---------------------------------------------------------------------

    @initialize(picks=st.lists(st.integers(0, len(NUMBERS) - 1), min_size=1, max_size=7),
                chunk_size=st.integers(1, 3), windowed=st.booleans())
    def daemons_start(self, picks: list[int], chunk_size: int, windowed: bool) -> None:
        for worker in WORKERS:
            self.run(self.repo.register_worker(worker, self.now, "test-host", 1, "test"))
        self.ingest(picks, chunk_size, False, windowed)

    @precondition(lambda self: len(self.campaigns) < 4)
    @rule(picks=st.lists(st.integers(0, len(NUMBERS) - 1), min_size=1, max_size=7),
          chunk_size=st.integers(1, 3), invalid=st.booleans(), windowed=st.booleans())
    def ingest(self, picks: list[int], chunk_size: int, invalid: bool, windowed: bool) -> None:
        now = self.advance()
        path = write_contacts(self.workdir / f"{uuid.uuid4().hex}.csv",
                              [NUMBERS[i] for i in picks] + (["12345"] if invalid else []))
        options = dict(chunk_size=chunk_size, start_at=now - STEP, end_at=now + timedelta(days=2))
        if windowed:  # whole local days, so chunks carry a window that can run out
            options["excluded_weekdays"] = DAY_NAMES[(now.weekday() + 4) % 7]
        created = self.run(self.repo.create_campaign(campaign(path, **options)))
        row = self.run(self.repo.claim_campaign(created.id, "a", now, now + LEASE))
        assert row is not None
        assert self.run(ingest_campaign(self.repo, row, self.settings, "a", lambda: self.now))
        self.campaigns.append(created.id)

    @rule(worker=st.sampled_from(WORKERS), after=st.integers(0, 4))
    def claim(self, worker: str, after: int) -> None:
        now = self.advance()
        times = ClaimTimes(now=now, lease_until=now + LEASE, opens_by=now + timedelta(seconds=30),
                           open_until=now + windows.MIN_WINDOW)
        claim = self.run(self.repo.claim_next_chunk(worker, times, after, recent_since(self.settings, now)))
        if claim is not None:
            self.claims.append((worker, claim))

    @precondition(lambda self: self.claims)
    @rule(pick=st.integers(0, 50), kind=st.sampled_from(sorted(RESULTS)), rejection_limit=st.sampled_from([0, 2]))
    def answer(self, pick: int, kind: str, rejection_limit: int) -> None:
        worker, claim = self.claims.pop(pick % len(self.claims))
        now = self.advance()
        result = RESULTS[kind]
        plan = next_step(result.outcome, result.status_code, result.error, claim.attempt, claim.contact_count, now,
                         self.settings.submission.retry, random.Random(pick), result.retry_after_seconds)
        self.run(self.repo.record_outcome(claim, worker, result, plan, now, rejection_limit))

    @precondition(lambda self: self.claims)
    @rule(pick=st.integers(0, 50), ended=st.booleans())
    def never_sent(self, pick: int, ended: bool) -> None:
        """Shutdown between claim and request (back to pending), or the campaign ended meanwhile."""
        _, claim = self.claims.pop(pick % len(self.claims))
        now = self.advance()
        self.run(self.repo.release_claim(claim, expired_at=now if ended and not claim.window_end_at else None))

    @rule()
    def leases_run_out(self) -> None:
        """Heartbeats missed (a database outage): another daemon declares the chunks unknown, while
        their answers may still come (a live daemon's lease alone no longer takes them)."""
        now = self.advance()
        self.run(self.repo.abandon_submitting(now + LEASE + STEP, now + LEASE + STEP))

    @rule(worker=st.sampled_from(WORKERS))
    def daemon_restarts(self, worker: str) -> None:
        """kill -9 and start again: what it had in flight is unknown, and its answers never come."""
        now = self.advance()
        self.run(self.repo.abandon_submitting(now, self.started - STEP, also_dead={worker}))
        self.claims = [(w, c) for w, c in self.claims if w != worker]

    @rule()
    def tick(self) -> None:
        """The daemon's tick: honour edits and the clock, then start what is due."""
        now = self.advance()
        self.run(self.repo.housekeeping(now))
        for row in self.run(self.repo.campaigns_to_start(now)):
            self.run(self.repo.claim_campaign(row.id, "a", now, now + LEASE))
        self.housekept = True

    # -- an admin --------------------------------------------------------------------

    @precondition(lambda self: self.campaigns)
    @rule(pick=st.integers(0, 50), status=st.sampled_from([CampaignStatus.CANCELLED, CampaignStatus.PAUSED,
                                                           CampaignStatus.SCHEDULED]))
    def command(self, pick: int, status: CampaignStatus) -> None:
        """campaign cancel / pause / resume."""
        self.advance()
        try:
            self.run(self.repo.change_status(self.pick(pick), status))
        except UserError:
            pass

    @precondition(lambda self: self.campaigns)
    @rule(pick=st.integers(0, 50))
    def cancel_by_sql(self, pick: int) -> None:
        now = self.advance()
        self.run(self.edit(self.pick(pick), status=CampaignStatus.CANCELLED.value))
        self.run(self.repo.housekeeping(now))
        self.housekept = True

    @precondition(lambda self: self.campaigns)
    @rule(pick=st.integers(0, 50))
    def end_at_passes(self, pick: int) -> None:
        now = self.advance()
        self.run(self.edit(self.pick(pick), end_at=now - timedelta(seconds=1)))
        self.run(self.repo.housekeeping(now))
        self.housekept = True

    @rule(pick=st.integers(0, 50))
    def window_runs_out(self, pick: int) -> None:
        now = self.advance()
        unsent = self.run(self.repo.unsent_windows())
        if unsent:
            chunk = unsent[pick % len(unsent)]
            move = WindowMove(chunk.chunk_id, (chunk.window_start_at, chunk.window_end_at), None)
            self.run(self.repo.move_windows([move], now))

    @rule(pick=st.integers(0, 50))
    def suppress(self, pick: int) -> None:
        """A number still to be called goes on the do-not-call list."""
        numbers = self.run(pending_numbers(self.repo)) or [e164(n) for n in NUMBERS]
        self.run(self.repo.add_suppressions([numbers[pick % len(numbers)]], "asked not to be called", "test",
                                            self.advance()))

    @precondition(lambda self: self.campaigns)
    @rule(pick=st.integers(0, 50))
    def resend_unknown(self, pick: int) -> None:
        self.run(self.repo.resend_chunks(self.pick(pick), None, self.advance()))

    # -- what must hold ----------------------------------------------------------------

    @invariant()
    def ledger_adds_up(self) -> None:
        settled = None if self.housekept else False  # None: counters too, for final campaigns
        self.housekept = False
        for campaign_id in self.campaigns:
            found = self.run(self.repo._ledger(campaign_discrepancies, campaign_id, settled, read_only=True))
            assert found == [], f"campaign {campaign_id}: {found}"

    def pick(self, pick: int) -> int:
        return self.campaigns[pick % len(self.campaigns)]

    async def edit(self, campaign_id: int, **values: object) -> None:
        """An admin's UPDATE of the campaign row."""
        async with self.repo.engine.begin() as conn:
            await conn.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))


async def pending_numbers(repo: Repository) -> list[str]:
    async with repo.engine.connect() as conn:
        found = await conn.execute(select(Contact.phone).where(Contact.status == ContactStatus.PENDING.value)
                                   .distinct().order_by(Contact.phone))
        return list(found.scalars())


def machine_settings(url: str) -> Settings:
    return Settings.model_validate({
        "database": {"url": url},
        "insight": {"base_url": "http://127.0.0.1:9", "developer_key": "right-key"},
        "submission": {"chunk_size": 3, "retry": dict(max_tries=3, initial_backoff_seconds=0.05,
                                                       max_backoff_seconds=0.2)},
        "contacts": {"min_hours_between_calls": 24},
        "scheduler": {"worker_id": "a"},
    })


async def fresh_database(database: str, url: str, workdir: Path) -> str:
    """SQLite: a copy of the migrated empty file; PostgreSQL: every table emptied."""
    if database == "sqlite":
        copy = workdir / f"{uuid.uuid4().hex}.db"
        shutil.copy(url.removeprefix("sqlite+aiosqlite:///"), copy)
        return f"sqlite+aiosqlite:///{copy}"
    engine = db.create_engine(url)
    try:
        async with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()
    return url


def test_the_ledger_adds_up_after_every_step(db_url, tmp_path, record_property):
    database = "sqlite" if db_url.startswith("sqlite") else "postgres"
    LedgerMachine.database, LedgerMachine.url, LedgerMachine.workdir = database, db_url, tmp_path
    before = EXAMPLES_RUN.get(database, 0)
    try:
        run_state_machine_as_test(LedgerMachine, settings=settings(
            max_examples=MAX_EXAMPLES, stateful_step_count=30, deadline=None, database=None,
                derandomize=DERANDOMIZE))
    finally:
        machines = EXAMPLES_RUN.get(database, 0) - before  # shrinking a failure runs more
        record_property("hypothesis_state_machines_run", machines)
        print(f"\n{database}: {machines} hypothesis state machines run (max_examples={MAX_EXAMPLES})")


# Interleavings the machine found, replayed on both databases so they fail (or pass) every run.
FOUND = {
    "an answer after the lease ran out settles the contacts too": [
        ("claim", dict(worker="a", after=0)), ("leases_run_out", {}),
        ("answer", dict(pick=0, kind="accepted", rejection_limit=0))],
    "a late refusal of a chunk declared unknown is recorded (split)": [
        ("claim", dict(worker="a", after=0)), ("leases_run_out", {}),
        ("answer", dict(pick=0, kind="rejected", rejection_limit=0))],
    "a claim released after its lease ran out keeps its submission": [
        ("claim", dict(worker="a", after=0)), ("leases_run_out", {}), ("never_sent", dict(pick=0, ended=False))],
    "a late release never undoes another daemon's claim": [
        ("claim", dict(worker="a", after=0)), ("leases_run_out", {}), ("resend_unknown", dict(pick=0)),
        ("tick", {}), ("claim", dict(worker="b", after=0)), ("never_sent", dict(pick=0, ended=False)),
        ("answer", dict(pick=0, kind="accepted", rejection_limit=0))],
    "an answer that lands after a resend is not lost": [
        ("claim", dict(worker="a", after=0)), ("leases_run_out", {}), ("resend_unknown", dict(pick=0)),
        ("answer", dict(pick=0, kind="accepted", rejection_limit=0))],
    "a resend leaves suppressed contacts out": [
        ("suppress", dict(pick=0)), ("claim", dict(worker="a", after=0)),
        ("answer", dict(pick=0, kind="unknown", rejection_limit=0)), ("resend_unknown", dict(pick=0))],
}


@pytest.mark.parametrize("steps", FOUND.values(), ids=FOUND.keys())
def test_found_interleavings(db_url, tmp_path, steps):
    LedgerMachine.database = "sqlite" if db_url.startswith("sqlite") else "postgres"
    LedgerMachine.url, LedgerMachine.workdir = db_url, tmp_path
    machine = LedgerMachine()
    try:
        machine.daemons_start(picks=[0, 1, 2], chunk_size=3, windowed=False)
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.ledger_adds_up()
    finally:
        machine.teardown()
