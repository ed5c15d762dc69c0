"""The submission ledger's SQL: claiming a chunk, recording an outcome, moving
the chunk and its campaign on, keeping the campaign's counters.

These run once or twice per HTTP request, so they are plain synchronous Core
statements: the repository runs a whole transaction of them in one hop (a
dedicated thread with its own sqlite3 connection, or ``run_sync`` on
PostgreSQL) instead of one event-loop round trip per statement, which cost
~40 thread hops and ~10 ms per request on aiosqlite.
Only ``repository.Repository`` calls them, inside its transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import Boolean, Float, Integer, String, and_, bindparam, delete, exists, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from . import states
from .chunking import halves
from .prepared import Prepared
from .models import (
    FINAL_CAMPAIGN_STATUSES,
    CallResult,
    Campaign,
    Outcome,
    PlumAccount,
    CampaignStatus,
    Chunk,
    ChunkBody,
    ChunkStatus,
    Contact,
    ContactStatus,
    RecentCall,
    Submission,
    Suppression,
    UTCDateTime,
    Worker,
)
from .retry import NextStep, Step, stop_splitting

OPEN_CHUNK = (ChunkStatus.PENDING.value, ChunkStatus.SUBMITTING.value)
FINAL_STATUSES = tuple(sorted(s.value for s in FINAL_CAMPAIGN_STATUSES))
# On SQLite a time an admin wrote that denotes no instant stays as written
# (models.UnreadableTime); such a row must never match a time comparison.
CANONICAL_TIME_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*"
ENDED_REASON = "still unsent at the campaign's end_at"
NOTHING_LEFT = "no contact left to call (suppressed or recently contacted)"


@dataclass(frozen=True)
class ClaimedChunk:
    """Everything needed to send one chunk, read in the claiming transaction."""

    chunk_id: int
    campaign_id: int
    seq: int
    attempt: int
    contact_count: int
    submission_id: int
    survey_id: str
    instance_id: str
    start_at: datetime
    end_at: datetime
    max_attempts: int
    reattempt_wait: int | None
    result_url: str | None
    contacts_header: str | None
    window_start_at: datetime | None = None  # with calling windows: what is sent instead of start_at/end_at
    window_end_at: datetime | None = None
    worker: str = ""  # the daemon that holds the claim
    token: int = 0  # chunks.claim_token at this claim: writes under the claim check it (the fence)
    outage_tries: int = 0  # earlier attempts that failed during a Plum outage (not counted)
    slot: "Slot | None" = None  # the account's rate slot booked with the claim

    @property
    def counted_attempt(self) -> int:
        """This attempt's number against max_tries."""
        return self.attempt - self.outage_tries

    def call_window(self, now: datetime) -> tuple[datetime, datetime]:
        """start_timestamp / end_timestamp: the chunk's calling window, else the campaign's times."""
        start, end = self.start_at, self.end_at
        if self.window_start_at is not None and self.window_end_at is not None:
            start, end = self.window_start_at, self.window_end_at
        return max(start, now), end


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


@dataclass(frozen=True)
class AccountLimits:
    """The Plum account's limits, enforced in the claim transaction for every daemon at once."""

    account: str
    interval_seconds: float  # GCRA spacing between two requests' start: (1 + margin) / rate, or more (AnswerSpacing)
    max_in_flight: int


class AccountFull:
    """claim_next's answer when the account already has max_in_flight requests out."""

    def __repr__(self) -> str:
        return "ACCOUNT_FULL"


ACCOUNT_FULL = AccountFull()


def db_epoch(conn: Connection) -> Any:
    """SQL: now, in Unix seconds of the database's clock (the same for every daemon)."""
    if is_postgres(conn):
        return func.extract("epoch", func.clock_timestamp())
    return (func.julianday("now") - 2440587.5) * 86400.0


def _account_row(conn: Connection, account: str) -> None:
    """Lock the account's row (PostgreSQL; SQLite's write transaction is the lock), creating it
    the first time: claims of every daemon on this account take turns here."""
    query = select(PlumAccount.account).where(PlumAccount.account == account)
    if is_postgres(conn):
        query = query.with_for_update()
    if conn.execute(query).first() is None:
        dialect_insert = postgresql_insert if is_postgres(conn) else sqlite_insert
        conn.execute(dialect_insert(PlumAccount).values(account=account, updated_at=datetime.now(timezone.utc))
                     .on_conflict_do_nothing(index_elements=[PlumAccount.account]))
        conn.execute(query)


def in_flight(conn: Connection) -> int:
    """Requests out at Plum now, by every daemon: chunks being submitted."""
    return int(hot_sql(conn).in_flight.run(conn).scalar() or 0)


# A slot free at once is booked this far ahead: the time to build and send the request once
# the claim has returned (a few ms since building it got cheap). A request leaving later than its
# slot by less than rate_limit_margin_seconds cannot put R + 1 requests in one second; 15 ms here
# cost every request that found the account idle (in-flight-bound sending) 15 ms of its place.
SLOT_BUILD_SECONDS = 0.002


@dataclass(frozen=True)
class Slot:
    """A booked send slot and the database's clock when it was booked (Unix seconds): the
    daemon turns them into its own clock (ratelimit.ClockOffset), so the time the answer took
    to come back does not make the request leave late."""

    at_epoch: float
    db_now_epoch: float


def take_slots(conn: Connection, limits: AccountLimits, count: int = 1) -> list[Slot]:
    """The account's next ``count`` send slots (GCRA with a burst of one, on the database's
    clock). Slots are spaced ``interval_seconds`` apart whatever daemon takes them, so a daemon
    joining or restarting never bursts."""
    params = {"b_account": limits.account, "interval": limits.interval_seconds, "count": count}
    booked = hot_sql(conn).slots.run(conn, params).first()
    if booked is None:  # the account's first claim (SQLite: the write transaction is the lock)
        _account_row(conn, limits.account)
        booked = hot_sql(conn).slots.run(conn, params).one()
    at, now = float(booked[0]), float(booked[1])
    return [Slot(at + i * limits.interval_seconds, now) for i in range(count)]


_PUSH = Prepared(update(PlumAccount).where(PlumAccount.account == bindparam("b_account"))
                 .values(rate_next_slot=PlumAccount.rate_next_slot + bindparam("b_seconds", type_=Float())))


def push_schedule(conn: Connection, account: str, seconds: float) -> None:
    """Move the account's next free slot back by ``seconds`` (a request left that late). Also
    when that slot has passed: the next request must still be an interval after the late one."""
    _PUSH.run(conn, {"b_account": account, "b_seconds": seconds})


def database_clock(conn: Connection) -> float:
    """The database's clock now (Unix seconds)."""
    return float(conn.scalar(select(db_epoch(conn))) or 0.0)


def slot_wait(conn: Connection, account: str) -> float:
    """Seconds until the account's next free slot (0 when one is free now), without taking it."""
    value = conn.scalar(select(PlumAccount.rate_next_slot - db_epoch(conn)).where(PlumAccount.account == account))
    return max(0.0, float(value or 0.0))


@dataclass(frozen=True)
class ClaimTimes:
    """The moments a claim compares with (the caller's clock and settings)."""

    now: datetime
    lease_until: datetime
    opens_by: datetime  # a calling window opening before this (now + lead_seconds) may be sent now
    open_until: datetime  # ... and only while it stays open until at least this (now + MIN_WINDOW)


def readable(conn: Connection, column: Any) -> Any:
    """SQL: this time column holds an instant (always true on PostgreSQL's timestamptz)."""
    if is_postgres(conn):
        return literal(True)
    # The shape, and a real date and time: SQLite keeps '2026-02-30' or hour 99 as written
    # (julianday() rolls Feb 30 over to March, and is NULL for hour 99). Whole seconds only,
    # so a fraction that rounds up never rolls a date over.
    seconds = func.substr(column, 1, 19)
    return and_(column.op("GLOB", return_type=Boolean)(literal(CANONICAL_TIME_GLOB, String())),
                func.date(func.julianday(seconds)) == func.substr(column, 1, 10))


def move_chunks(conn: Connection, /, where: ColumnElement[bool] | list[int], sources: tuple[ChunkStatus, ...],
                target: ChunkStatus, now: datetime, *, contacts: ContactStatus | None = None,
                reason: str | None = None, **values: Any) -> list[tuple[int, int]]:
    """The one writer of chunk status: the chunks matching ``where`` (a condition, or a list of
    chunk ids) that are still in one of ``sources`` move to ``target`` (a move the table in
    states.py allows, else IllegalTransition), and their waiting contacts follow (``contacts``
    overrides where to, ``reason`` is theirs). Returns (chunk id, campaign id) of the chunks moved."""
    states.check_move(sources, target)
    if isinstance(where, list):
        statement, params = _move_by_ids(sources, target, values)
        rows = statement.run(conn, {**params, "ids": where, "b_now": now}).all()
    else:
        rows = conn.execute(update(Chunk).where(where, Chunk.status.in_([s.value for s in sources]))
                            .values(status=target.value, updated_at=now, **values)
                            .returning(Chunk.id, Chunk.campaign_id)).all()
    moved = [(chunk_id, campaign_id) for chunk_id, campaign_id in rows]
    follow = contacts or states.CONTACT_OF[target]
    if follow is not None:
        _move_contacts(conn, [chunk_id for chunk_id, _ in moved], follow, reason, states.contacts_of(sources))
    if target in states.FINAL_CHUNK:  # never sent again: its stored request goes
        drop_bodies(conn, [chunk_id for chunk_id, _ in moved])
    return moved


def drop_bodies(conn: Connection, chunk_ids: list[int]) -> None:
    """The stored request CSV of these chunks goes (a final chunk, or contacts taken out)."""
    for ids in _in_batches(chunk_ids):
        hot_sql(conn).drop_bodies.run(conn, {"ids": ids})


def _in_batches(ids: list[int], size: int = 500) -> list[list[int]]:
    """Ids a few hundred at a time: one IN list of a whole campaign's chunks would pass SQLite's
    limit on parameters."""
    return [ids[start:start + size] for start in range(0, len(ids), size)]


# Expressions a move may set, shared so that its statement can be built once (see _move_by_ids).
ATTEMPT_GIVEN_BACK = Chunk.attempts - 1
OUTAGE_TRY = Chunk.outage_tries + 1
_SHARED_EXPRESSIONS = {id(ATTEMPT_GIVEN_BACK), id(OUTAGE_TRY)}
_MOVES: dict[tuple[Any, ...], Prepared] = {}


def _move_by_ids(sources: tuple[ChunkStatus, ...], target: ChunkStatus,
                 values: dict[str, Any]) -> tuple[Prepared, dict[str, Any]]:
    """The UPDATE for a move of chunks by id, built once per shape (the statement of every
    answer: building it cost more than running it); plain values become parameters."""
    if any(isinstance(v, ColumnElement) and id(v) not in _SHARED_EXPRESSIONS for v in values.values()):
        raise ValueError("a move by ids sets only plain values and the shared expressions")
    key = (sources, target, tuple(sorted((k, id(v) if isinstance(v, ColumnElement) else None)
                                         for k, v in values.items())))
    params = {f"b_{k}": v for k, v in values.items() if not isinstance(v, ColumnElement)}
    if key not in _MOVES:
        columns = Chunk.__table__.c
        sets = {k: v if isinstance(v, ColumnElement) else bindparam(f"b_{k}", type_=columns[k].type)
                for k, v in values.items()}
        _MOVES[key] = Prepared(update(Chunk)
                                .where(Chunk.id.in_(bindparam("ids", expanding=True)),
                                       Chunk.status.in_([s.value for s in sources]))
                                .values(status=target.value, updated_at=bindparam("b_now", type_=UTCDateTime()),
                                        **sets)
                                .returning(Chunk.id, Chunk.campaign_id))
    return _MOVES[key], params


_CONTACT_MOVES: dict[tuple[Any, ...], Prepared] = {}


def _move_contacts(conn: Connection, chunk_ids: list[int], status: ContactStatus, reason: str | None,
                   sources: frozenset[ContactStatus]) -> None:
    waiting = tuple(sorted(s.value for s in sources if s is not status))
    key = (status, reason is None, waiting)
    if key not in _CONTACT_MOVES:
        values: dict[str, Any] = {"status": status.value}
        if reason is not None:
            values["reason"] = bindparam("b_reason")
        _CONTACT_MOVES[key] = Prepared(update(Contact).where(Contact.chunk_id.in_(bindparam("ids", expanding=True)),
                                                             Contact.status.in_(waiting)).values(**values))
    for ids in _in_batches(chunk_ids):
        _CONTACT_MOVES[key].run(conn, {"ids": ids, "b_reason": reason})


def close_unsent(conn: Connection, campaign_ids: Any, status: ChunkStatus, reason: str | None,
                 now: datetime) -> set[int]:
    """The one way unsent chunks end without a request (cancel, stop, end_at, a row the daemon
    cannot use): they and their contacts take ``status``. Returns the campaigns touched."""
    moved = move_chunks(conn, Chunk.campaign_id.in_(campaign_ids), (ChunkStatus.PENDING,), status, now,
                        finished_at=now, last_error=reason)
    return {campaign_id for _, campaign_id in moved}


UNKNOWN_REASON = "the daemon stopped before Plum's answer was recorded: the calls may have been queued"


def abandon_submitting(conn: Connection, now: datetime, dead_before: datetime, also_dead: list[str]) -> int:
    """Chunks whose lease ran out, or whose daemon is dead (no heartbeat since ``dead_before``;
    at start-up also this daemon's id in an earlier life), become unknown: their calls may
    have been queued. A dead daemon's unfinished ingestion is released for another to restart."""
    live = select(Worker.worker_id).where(Worker.last_tick_at >= dead_before, Worker.stopped_at.is_(None))
    gone = Chunk.lease_owner.not_in(live) | Chunk.lease_owner.in_(also_dead)
    # A live daemon keeps its claims however long its answer takes to be written (a database
    # outage); the lease decides only for a claim whose owner left no heartbeat at all.
    stale = gone | ((Chunk.lease_expires_at < now) & Chunk.lease_owner.is_(None))
    conn.execute(update(Campaign).where(Campaign.ingested_at.is_(None), Campaign.lease_owner.is_not(None),
                                        Campaign.lease_owner.not_in(live) | Campaign.lease_owner.in_(also_dead))
                 .values(lease_owner=None, lease_expires_at=None))
    moved = move_chunks(conn, stale, (ChunkStatus.SUBMITTING,), ChunkStatus.UNKNOWN, now, last_error=UNKNOWN_REASON,
                        lease_owner=None, lease_expires_at=None, finished_at=now)
    ids = [chunk_id for chunk_id, _ in moved]
    if not ids:
        return 0
    conn.execute(update(Submission).where(Submission.chunk_id.in_(ids), Submission.outcome == "sending")
                 .values(outcome="unknown", error=UNKNOWN_REASON, finished_at=now))
    reconcile_called(conn, ids, now)
    for campaign_id in sorted({campaign_id for _, campaign_id in moved}):
        refresh(conn, campaign_id, now)
    return len(ids)


def housekeeping(conn: Connection, now: datetime, plum_down_since: datetime | None = None) -> None:
    """Honour admins' edits and the clock: cancel, expire, refresh counters, finish."""
    touched = close_stopped_and_ended(conn, now, plum_down_since)
    running = conn.execute(select(Campaign.id).where(Campaign.status == CampaignStatus.RUNNING.value,
                                                     Campaign.ingested_at.is_not(None))).scalars().all()
    for campaign_id in sorted(touched | set(running)):  # one lock order for every daemon
        refresh(conn, campaign_id, now)


def outage_note(reason: str, plum_down_since: datetime | None) -> str:
    """An expiry's reason, naming the Plum outage that kept the chunk unsent."""
    if plum_down_since is None:
        return reason
    return f"{reason}: Plum unavailable since {plum_down_since:%H:%M} UTC"


def close_stopped_and_ended(conn: Connection, now: datetime, plum_down_since: datetime | None = None) -> set[int]:
    """Unsent chunks of campaigns that are over: stopped (cancelled, failed, or set final by an
    admin) become cancelled; past their end_at become expired (naming a Plum outage if one is on)."""
    touched: set[int] = set()
    for status in FINAL_STATUSES:
        stopped = select(Campaign.id).where(Campaign.status == status)
        touched |= close_unsent(conn, stopped, ChunkStatus.CANCELLED, f"the campaign is {status}", now)
    ended = select(Campaign.id).where(Campaign.end_at <= now, readable(conn, Campaign.end_at))
    return touched | close_unsent(conn, ended, ChunkStatus.EXPIRED, outage_note(ENDED_REASON, plum_down_since), now)


def claim_next(
    conn: Connection, worker: str, times: ClaimTimes, after_campaign_id: int, recent_since: datetime | None = None,
    limits: AccountLimits | None = None,
) -> ClaimedChunk | AccountFull | None:
    """Take the next ready chunk, round-robin over campaigns (the caller's transaction is the lock).
    With ``limits``: ACCOUNT_FULL when the account has its maximum in flight, and the claim
    carries its send slot (``slot``)."""
    claims = claim_batch(conn, worker, times, after_campaign_id, recent_since, limits, 1)
    return claims if isinstance(claims, AccountFull) else (claims[0] if claims else None)


ChunkRows = list[tuple[str, str | None]]
# What a claim hands the sender: the chunk's stored request CSV, or its contacts to build it from.
Payload = bytes | ChunkRows


def claim_to_send(
    conn: Connection, worker: str, times: ClaimTimes, after_campaign_id: int, recent_since: datetime | None,
    limits: AccountLimits | None, most: int, body_format: str = "",
) -> list[tuple[ClaimedChunk, Payload]] | AccountFull:
    """``claim_batch``, with what each claimed chunk sends (``chunk_payload``), read in the same
    transaction (one transaction and one thread hop fewer for every request)."""
    claims = claim_batch(conn, worker, times, after_campaign_id, recent_since, limits, most)
    if isinstance(claims, AccountFull):
        return claims
    return [(claim, chunk_payload(conn, claim, body_format)) for claim in claims]


@dataclass(frozen=True)
class NextClaim:
    """``claim_to_send``'s arguments, for a claim made in the transaction that writes an answer
    (``record_then_claim``)."""

    worker: str
    times: ClaimTimes
    after_campaign_id: int
    recent_since: datetime | None
    limits: AccountLimits | None
    most: int
    body_format: str = ""


Claimed = list[tuple[ClaimedChunk, Payload]] | AccountFull


def record_then_claim(conn: Connection, claim: ClaimedChunk, worker: str, result: Any, plan: NextStep,
                      now: datetime, rejection_limit: int, remember_calls: bool,
                      then: NextClaim) -> tuple[NextStep | None, Claimed]:
    """``record``, then ``claim_to_send`` in the same transaction: the answer frees the place in
    flight the dispatcher is waiting for, and one transaction instead of two is ~15% of the
    ledger's cost of a request (issue 15). The claim sees the answer, as a claim made after its
    own transaction would."""
    applied = record(conn, claim, worker, result, plan, now, rejection_limit, remember_calls)
    return applied, claim_to_send(conn, then.worker, then.times, then.after_campaign_id, then.recent_since,
                                  then.limits, then.most, then.body_format)


def claim_batch(
    conn: Connection, worker: str, times: ClaimTimes, after_campaign_id: int, recent_since: datetime | None,
    limits: AccountLimits | None, most: int,
) -> list[ClaimedChunk] | AccountFull:
    """Take up to ``most`` ready chunks in one transaction, round-robin over campaigns (the next
    campaign after ``after_campaign_id`` first). With ``limits``: never more than the account's
    free places in flight (ACCOUNT_FULL when there is none), each claim carrying its own send
    slot, booked back to back. One transaction for several requests is what makes a request
    cheap when many are out at once (issue 15)."""
    sql = hot_sql(conn)
    if limits is not None:
        if is_postgres(conn):
            _account_row(conn, limits.account)
        most = min(most, limits.max_in_flight - in_flight(conn))
        if most <= 0:
            return ACCOUNT_FULL
    campaigns = [c for c in sql.running.run(conn, {"now": times.now}).all() if _readable_times(c)]
    for campaign in _round_robin(campaigns, after_campaign_id):
        rows = _claimable(conn, sql, campaign, times, recent_since, most)
        if rows:
            return _take(conn, sql, worker, times, campaign, rows, limits)
    return []


def _readable_times(campaign: Any) -> bool:
    """Its start_at and end_at denote instants (an admin's typo in SQLite reads as
    models.UnreadableTime, which campaign review reports): checked here rather than in SQL,
    where GLOB and julianday() cost SQLite ~30 µs per campaign at every claim."""
    return isinstance(campaign.start_at, datetime) and isinstance(campaign.end_at, datetime)


def _round_robin(campaigns: Sequence[Any], after_campaign_id: int) -> list[Any]:
    """Running campaigns in turn: those after the last one served first."""
    return ([c for c in campaigns if c.id > after_campaign_id] + [c for c in campaigns if c.id <= after_campaign_id])


def _claimable(conn: Connection, sql: "HotSql", campaign: Any, times: ClaimTimes, recent_since: datetime | None,
               most: int) -> list[tuple[Any, int]]:
    """A campaign's next ready chunks (file order) with how many contacts each still sends; a
    chunk whose every contact was suppressed or called by another campaign since ingestion is
    cancelled on the way."""
    params = {"campaign_id": campaign.id, "now": times.now, "opens_by": times.opens_by,
              "open_until": times.open_until, "most": most}
    while True:
        rows = sql.ready.run(conn, params).all()
        if not rows:
            return []
        removed = suppress_in_chunks(conn, [row.id for row in rows], campaign.id, times.now, recent_since)
        kept = [(row, row.contact_count - removed.get(row.id, 0)) for row in rows]
        emptied = [row.id for row, remaining in kept if remaining <= 0]
        if emptied:
            move_chunks(conn, emptied, (ChunkStatus.PENDING,), ChunkStatus.CANCELLED, times.now,
                        finished_at=times.now, contact_count=0, last_error=NOTHING_LEFT)
            refresh_if_settled(conn, campaign.id, times.now)
        kept = [(row, remaining) for row, remaining in kept if remaining > 0]
        if kept:
            return kept


def _take(conn: Connection, sql: "HotSql", worker: str, times: ClaimTimes, campaign: Any,
          rows: list[tuple[Any, int]], limits: AccountLimits | None) -> list[ClaimedChunk]:
    """The chunks become ``submitting`` (attempt and claim token up by one, leased to ``worker``),
    each with its ``sending`` submission row and, with limits, its send slot."""
    now = times.now
    states.check_move((ChunkStatus.PENDING,), ChunkStatus.SUBMITTING)  # contacts stay pending (CONTACT_OF)
    sql.to_submitting.run(conn, {"ids": [row.id for row, _ in rows], "worker": worker, "now": now,
                                     "lease_until": times.lease_until})
    slots = take_slots(conn, limits, len(rows)) if limits is not None else [None] * len(rows)
    claims = []
    for (row, remaining), slot in zip(rows, slots):
        attempt, token = row.attempts + 1, row.claim_token + 1
        submission_id: int = sql.new_submission.run(conn, {
            "campaign_id": campaign.id, "chunk_id": row.id, "attempt": attempt, "worker": worker,
            "started_at": now, "outcome": "sending", "contact_count": remaining}).scalar_one()
        claims.append(ClaimedChunk(
            chunk_id=row.id, campaign_id=campaign.id, seq=row.seq, attempt=attempt, contact_count=remaining,
            submission_id=submission_id, survey_id=campaign.survey_id, instance_id=campaign.instance_id,
            start_at=campaign.start_at, end_at=campaign.end_at, max_attempts=campaign.max_attempts,
            reattempt_wait=campaign.reattempt_wait, result_url=campaign.result_url,
            contacts_header=campaign.contacts_header, window_start_at=row.window_start_at,
            window_end_at=row.window_end_at, worker=worker, token=token, outage_tries=row.outage_tries, slot=slot))
    return claims


@dataclass(frozen=True)
class HotSql:
    """The statements of every request (claim, answer), built once per dialect and prepared
    (see prepared.py): building, cache-keying and running a statement through SQLAlchemy cost
    several times what SQLite takes to run it."""

    running: Prepared
    ready: Prepared
    to_submitting: Prepared
    new_submission: Prepared
    in_flight: Prepared
    slots: Prepared
    answer: Prepared
    fence: Prepared
    still_open: Prepared
    lock_campaign: Prepared
    settle: Prepared
    campaign_state: Prepared
    any_suppression: Prepared
    suppress: Prepared
    suppress_recent: Prepared
    contacts_to_send: Prepared
    body: Prepared
    drop_bodies: Prepared


_HOT_SQL: dict[str, HotSql] = {}


def hot_sql(conn: Connection) -> HotSql:
    name = conn.dialect.name
    if name not in _HOT_SQL:
        statements = {**_build_claim_sql(conn), **_build_record_sql(), **_suppress_sql()}
        _HOT_SQL[name] = HotSql(**{key: Prepared(statement) for key, statement in statements.items()})
    return _HOT_SQL[name]


def _build_record_sql() -> dict[str, Any]:
    campaign_id: Any = bindparam("campaign_id")
    chunk_id: Any = bindparam("chunk_id")
    answer = update(Submission).where(Submission.id == bindparam("b_id")).values(
        finished_at=bindparam("b_finished_at", type_=UTCDateTime()), status_code=bindparam("b_status_code"),
        outcome=bindparam("b_outcome"), error=bindparam("b_error"), response_excerpt=bindparam("b_excerpt"),
        latency_seconds=bindparam("b_latency"))
    still_open = select(Chunk.id).where(Chunk.campaign_id == campaign_id, Chunk.status.in_(OPEN_CHUNK)).limit(1)
    return dict(
        answer=answer,
        fence=select(Chunk.status, Chunk.claim_token).where(Chunk.id == chunk_id),
        still_open=still_open,
        lock_campaign=select(Campaign.id).where(Campaign.id == campaign_id).with_for_update(),
        settle=select(Campaign.status, still_open.scalar_subquery().label("open_chunk"))
        .where(Campaign.id == campaign_id),
        campaign_state=select(Campaign.status, Campaign.ingested_at, Campaign.contacts_valid)
        .where(Campaign.id == campaign_id),
        body=select(ChunkBody.contacts, ChunkBody.format, ChunkBody.body)
        .where(ChunkBody.chunk_id == chunk_id, ChunkBody.campaign_id == campaign_id),
        drop_bodies=delete(ChunkBody).where(ChunkBody.chunk_id.in_(bindparam("ids", expanding=True))),
        contacts_to_send=select(Contact.phone, Contact.extra)
        .where(Contact.chunk_id == bindparam("chunk_id"), Contact.status == ContactStatus.PENDING.value)
        .order_by(Contact.row_number))


def _build_claim_sql(conn: Connection) -> dict[str, Any]:
    now = bindparam("now", type_=UTCDateTime())
    running = (
        select(Campaign.id, Campaign.survey_id, Campaign.instance_id, Campaign.start_at, Campaign.end_at,
               Campaign.max_attempts, Campaign.reattempt_wait, Campaign.result_url, Campaign.contacts_header)
        .where(Campaign.status == CampaignStatus.RUNNING.value, Campaign.ingested_at.is_not(None),
               Campaign.end_at > now)  # and readable start_at, end_at: see _readable_times
        .order_by(Campaign.id))
    ready = (
        select(Chunk.id, Chunk.seq, Chunk.attempts, Chunk.claim_token, Chunk.contact_count,
               Chunk.window_start_at, Chunk.window_end_at, Chunk.outage_tries)
        .where(Chunk.campaign_id == bindparam("campaign_id"), Chunk.status == ChunkStatus.PENDING.value,
               (Chunk.next_attempt_at.is_(None)) | (Chunk.next_attempt_at <= now),
               (Chunk.window_start_at.is_(None)) | (Chunk.window_start_at <= bindparam("opens_by")),
               (Chunk.window_end_at.is_(None)) | (Chunk.window_end_at >= bindparam("open_until")))
        .order_by(Chunk.seq).limit(bindparam("most", type_=Integer())))
    if is_postgres(conn):
        ready = ready.with_for_update(skip_locked=True, of=Chunk)
    to_submitting = (
        update(Chunk).where(Chunk.id.in_(bindparam("ids", expanding=True)),
                            Chunk.status == ChunkStatus.PENDING.value)
        .values(status=ChunkStatus.SUBMITTING.value, updated_at=now, attempts=Chunk.attempts + 1,
                claim_token=Chunk.claim_token + 1, lease_owner=bindparam("worker"),
                lease_expires_at=bindparam("lease_until", type_=UTCDateTime())))
    greatest = func.greatest if is_postgres(conn) else func.max
    interval, count = bindparam("interval", type_=Float()), bindparam("count", type_=Integer())
    # A slot free now is booked a moment ahead: building the request takes a few ms, and a
    # request leaving late next to an on-time one is how R + 1 land in one second.
    first = greatest(func.coalesce(PlumAccount.rate_next_slot, 0.0), db_epoch(conn) + SLOT_BUILD_SECONDS)
    slots = (update(PlumAccount).where(PlumAccount.account == bindparam("b_account"))
             .values(rate_next_slot=first + interval * count)
             .returning(PlumAccount.rate_next_slot - interval * count, db_epoch(conn)))
    return dict(
        running=running, ready=ready, to_submitting=to_submitting,
        new_submission=insert(Submission).values(
            campaign_id=bindparam("campaign_id"), chunk_id=bindparam("chunk_id"), attempt=bindparam("attempt"),
            worker=bindparam("worker"), started_at=bindparam("started_at", type_=UTCDateTime()),
            outcome=bindparam("outcome"), contact_count=bindparam("contact_count")).returning(Submission.id),
        in_flight=select(func.count()).select_from(Chunk).where(Chunk.status == ChunkStatus.SUBMITTING.value),
        slots=slots)


SUPPRESSED_REASON = "on the suppression list"


RECENT_REASON = "queued by another campaign within contacts.min_hours_between_calls"


def do_not_call(campaign_id: int, recent_since: datetime | None) -> list[tuple[Any, str, str]]:
    """(which numbers, contact status, reason): the suppression list, and the frequency cap when on."""
    rules: list[tuple[Any, str, str]] = [
        (select(Suppression.number), ContactStatus.SUPPRESSED.value, SUPPRESSED_REASON)]
    if recent_since is not None:
        recent = select(RecentCall.number).where(RecentCall.campaign_id != campaign_id,
                                                 RecentCall.queued_at > recent_since)
        rules.append((recent, ContactStatus.RECENTLY_CONTACTED.value, RECENT_REASON))
    return rules


def suppress_in_chunks(conn: Connection, chunk_ids: list[int], campaign_id: int, now: datetime,
                       recent_since: datetime | None = None) -> dict[int, int]:
    """Take numbers not to be called (added since ingestion) out of chunks about to be sent:
    the suppression list, then (cap on) numbers another campaign queued after ``recent_since``
    (the rules of ``do_not_call``). How many each chunk lost (chunks that lost none are absent)."""
    sql = hot_sql(conn)
    params: dict[str, Any] = {"ids": chunk_ids, "b_campaign_id": campaign_id, "b_since": recent_since}
    removed: dict[int, int] = {}
    # An empty list takes nothing out: one lookup instead of a probe for every contact.
    rules = [sql.suppress] if sql.any_suppression.run(conn).rows else []
    if recent_since is not None:
        rules.append(sql.suppress_recent)
    for statement in rules:
        for chunk_id in statement.run(conn, params).scalars():
            removed[int(chunk_id or 0)] = removed.get(int(chunk_id or 0), 0) + 1
    for chunk_id, count in removed.items():
        conn.execute(update(Chunk).where(Chunk.id == chunk_id).values(
            contact_count=Chunk.contact_count - count, updated_at=now))
    drop_bodies(conn, list(removed))  # built with them: built again from the contacts left
    return removed


def _suppress_sql() -> dict[str, Any]:
    # Each contact's number is looked up (both tables are keyed by number): `phone IN (SELECT
    # ...)` made SQLite read the whole list at every claim (300 ms with 500,000 recent calls).
    def taking_out(listed: Any, status: ContactStatus, reason: str) -> Any:
        return (update(Contact)
                .where(Contact.chunk_id.in_(bindparam("ids", expanding=True)),
                       Contact.status == ContactStatus.PENDING.value, listed)
                .values(status=status.value, reason=reason).returning(Contact.chunk_id))

    suppressed = exists().where(Suppression.number == Contact.phone)
    recent = exists().where(RecentCall.number == Contact.phone, RecentCall.campaign_id != bindparam("b_campaign_id"),
                            RecentCall.queued_at > bindparam("b_since", type_=UTCDateTime()))
    return dict(any_suppression=select(Suppression.number).limit(1),
                suppress=taking_out(suppressed, ContactStatus.SUPPRESSED, SUPPRESSED_REASON),
                suppress_recent=taking_out(recent, ContactStatus.RECENTLY_CONTACTED, RECENT_REASON))


def remember_queued(conn: Connection, chunk_id: int, campaign_id: int, now: datetime) -> None:
    """Record when each number of an accepted chunk was queued (for the frequency cap)."""
    dialect_insert = postgresql_insert if is_postgres(conn) else sqlite_insert
    rows = select(Contact.phone, literal(campaign_id, Integer()), literal(now, UTCDateTime())).where(
        Contact.chunk_id == chunk_id, Contact.status == ContactStatus.QUEUED.value)
    statement = dialect_insert(RecentCall).from_select(["number", "campaign_id", "queued_at"], rows)
    conn.execute(statement.on_conflict_do_update(
        index_elements=[RecentCall.number],
        set_={"campaign_id": statement.excluded.campaign_id, "queued_at": statement.excluded.queued_at}))


def remember_recent(conn: Connection, since: datetime) -> int:
    """Fill ``recent_calls`` with every number queued after ``since`` (from the ledger): the
    table is written only while the frequency cap is on, so turning the cap on first fills it
    with what was queued meanwhile. A newer entry already there stays. Returns rows offered."""
    dialect_insert = postgresql_insert if is_postgres(conn) else sqlite_insert
    newest_first = func.row_number().over(partition_by=Contact.phone, order_by=Chunk.finished_at.desc())
    queued = (select(Contact.phone, Contact.campaign_id, Chunk.finished_at, newest_first.label("nth"))
              .join(Chunk, Chunk.id == Contact.chunk_id)
              .where(Chunk.status == ChunkStatus.SUCCEEDED.value, Chunk.finished_at > since,
                     Contact.status == ContactStatus.QUEUED.value).subquery())
    # One row per number (PostgreSQL refuses to upsert one row twice in a statement, and two
    # campaigns may have queued a number while the cap was off): its latest queueing.
    rows = select(queued.c.phone, queued.c.campaign_id, queued.c.finished_at).where(queued.c.nth == 1)
    statement = dialect_insert(RecentCall).from_select(["number", "campaign_id", "queued_at"], rows)
    result = conn.execute(statement.on_conflict_do_update(
        index_elements=[RecentCall.number],
        set_={"campaign_id": statement.excluded.campaign_id, "queued_at": statement.excluded.queued_at},
        where=RecentCall.queued_at < statement.excluded.queued_at))
    return int(result.rowcount or 0)


def chunk_payload(conn: Connection, claim: ClaimedChunk, body_format: str) -> Payload:
    """The chunk's request CSV as built at ingestion, in ``body_format`` (the config's); else the
    contacts to build it from. A body goes whenever contacts leave its chunk (drop_bodies), and
    must also hold exactly the claim's count of contacts: two checks, so that a count or a
    deletion missed some day still never sends a number taken out."""
    stored = hot_sql(conn).body.run(conn, {"chunk_id": claim.chunk_id, "campaign_id": claim.campaign_id}).first()
    if stored is not None and stored.contacts == claim.contact_count and stored.format == body_format:
        return bytes(stored.body)
    return chunk_contacts(conn, claim.chunk_id)


def chunk_contacts(conn: Connection, chunk_id: int) -> ChunkRows:
    """(E.164, packed other columns) of a chunk's contacts, in file order."""
    rows = hot_sql(conn).contacts_to_send.run(conn, {"chunk_id": chunk_id})
    return [(phone or "", extra) for phone, extra in rows.all()]  # pending contacts always have a number


def record(conn: Connection, claim: ClaimedChunk, worker: str, result: Any, plan: NextStep,
           now: datetime, rejection_limit: int = 0, remember_calls: bool = True) -> NextStep | None:
    """The submission row gets the answer; the chunk and its campaign move on. Returns the
    step applied (it may differ from ``plan``), or None when the chunk is no longer this claim's.
    ``remember_calls``: write the numbers queued to ``recent_calls`` (the frequency cap is on)."""
    sql = hot_sql(conn)
    sql.answer.run(conn, {
        "b_id": claim.submission_id, "b_finished_at": now, "b_status_code": result.status_code,
        "b_outcome": result.outcome.value, "b_error": result.error, "b_excerpt": result.excerpt,
        "b_latency": result.latency_seconds})
    chunk = sql.fence.run(conn, {"chunk_id": claim.chunk_id}).first()
    # The fence: a chunk claimed again since (by any daemon, this one included) is that
    # claim's. Without a new claim our real answer is the truth, even after the chunk was
    # declared unknown, or then resent, cancelled or expired before anyone sent it again.
    if chunk is None or chunk.claim_token != claim.token:
        return None
    if chunk.status not in (ChunkStatus.SUBMITTING.value, ChunkStatus.UNKNOWN.value):
        if plan.step is not Step.SUCCEEDED:
            return None  # not queued by us: the resend, cancel or expiry stands
        plan = NextStep(Step.SUCCEEDED)  # queued: sending it again would call everyone twice
    if plan.step in (Step.SPLIT, Step.REJECTED):
        plan = _unless_everything_is_refused(conn, claim.campaign_id, plan, rejection_limit)
    apply_step(conn, claim, plan, now, remember_calls)
    _reopen_if_finished(conn, claim.campaign_id, plan, now)
    _settle_after_answer(conn, claim.campaign_id, now, plan.step is Step.SUCCEEDED)
    return plan


def _settle_after_answer(conn: Connection, campaign_id: int, now: datetime, succeeded: bool) -> None:
    """refresh_if_settled, then _complete_if_clean for a success, from one look at the campaign
    (two statements fewer for every answer)."""
    sql = hot_sql(conn)
    if is_postgres(conn):
        sql.lock_campaign.run(conn, {"campaign_id": campaign_id})  # see refresh_if_settled
    state = sql.settle.run(conn, {"campaign_id": campaign_id}).first()
    if state is None:
        return
    if state.open_chunk is None:
        refresh(conn, campaign_id, now)
    if succeeded and state.status == CampaignStatus.COMPLETED_WITH_ERRORS.value:
        _complete_if_clean(conn, campaign_id, now)


def _reopen_if_finished(conn: Connection, campaign_id: int, plan: NextStep, now: datetime) -> None:
    """A late answer (written after a database outage, or from a journal) that gives its chunk
    another try belongs to a campaign the daemon may have finished meanwhile as
    completed_with_errors (that chunk counted as unknown): it runs again, so the retry is sent
    rather than cancelled."""
    if plan.step not in (Step.RETRY, Step.SPLIT):
        return
    conn.execute(update(Campaign).where(Campaign.id == campaign_id,
                                        Campaign.status == CampaignStatus.COMPLETED_WITH_ERRORS.value)
                 .values(status=CampaignStatus.RUNNING.value, status_seen=CampaignStatus.RUNNING.value,
                         finished_at=None, updated_at=now))


def _unless_everything_is_refused(conn: Connection, campaign_id: int, plan: NextStep, limit: int) -> NextStep:
    if limit <= 0:
        return plan
    counts = dict(conn.execute(
        select(Submission.outcome, func.count())
        .where(Submission.campaign_id == campaign_id,
               Submission.outcome.in_([Outcome.REJECTED.value, Outcome.ACCEPTED.value]))
        .group_by(Submission.outcome)).all())
    stop = stop_splitting(counts.get(Outcome.REJECTED.value, 0), counts.get(Outcome.ACCEPTED.value, 0), limit,
                          plan.message or "HTTP 400")
    return stop or plan


FINAL_STEPS = {
    Step.SUCCEEDED: ChunkStatus.SUCCEEDED,
    Step.FAILED: ChunkStatus.FAILED,
    Step.REJECTED: ChunkStatus.REJECTED,
    Step.UNKNOWN: ChunkStatus.UNKNOWN,
}


def apply_step(conn: Connection, claim: ClaimedChunk, plan: NextStep, now: datetime,
               remember_calls: bool = True) -> None:
    """Move the answered chunk (``submitting``, or ``unknown`` when declared so meanwhile) on."""
    released: dict[str, Any] = dict(lease_owner=None, lease_expires_at=None, last_error=plan.message)
    step = plan.step

    def move(target: ChunkStatus, **values: Any) -> None:
        sources = states.sources_for(target, states.ANSWERABLE)
        reason = plan.message if step is Step.REJECTED else None
        move_chunks(conn, [claim.chunk_id], sources, target, now, reason=reason, **released, **values)

    if step in (Step.PAUSE_ACCOUNT, Step.PAUSE_CAMPAIGN, Step.FAIL_CAMPAIGN):
        # Nothing was queued and the chunk is not to blame: it waits, its attempt not consumed.
        move(ChunkStatus.PENDING, attempts=ATTEMPT_GIVEN_BACK, next_attempt_at=None)
        stop_campaigns(conn, claim.campaign_id, step, plan.message or "", now)
    elif step is Step.RETRY and not plan.counted:
        move(ChunkStatus.PENDING, next_attempt_at=plan.retry_at, outage_tries=OUTAGE_TRY)
    elif step is Step.RETRY:
        move(ChunkStatus.PENDING, next_attempt_at=plan.retry_at)
    elif step is Step.SPLIT:
        move(ChunkStatus.SPLIT, finished_at=now)
        split(conn, claim.chunk_id, claim.campaign_id, now)
    else:
        if step is Step.SUCCEEDED:
            released["last_error"] = None
        move(FINAL_STEPS[step], finished_at=now)
        if step is Step.SUCCEEDED and remember_calls:
            remember_queued(conn, claim.chunk_id, claim.campaign_id, now)
        if step is Step.UNKNOWN:
            reconcile_called(conn, [claim.chunk_id], now)


def stop_campaigns(conn: Connection, campaign_id: int, step: Step, message: str, now: datetime) -> None:
    where: ColumnElement[bool]
    if step is Step.PAUSE_ACCOUNT:
        where = Campaign.status.in_([CampaignStatus.RUNNING.value, CampaignStatus.SCHEDULED.value])
        values: dict[str, Any] = dict(status=CampaignStatus.PAUSED.value, last_error=message)
    elif step is Step.PAUSE_CAMPAIGN:
        where = Campaign.id == campaign_id
        values = dict(status=CampaignStatus.PAUSED.value, last_error=message)
    else:
        where = Campaign.id == campaign_id
        values = dict(status=CampaignStatus.FAILED.value, last_error=message, finished_at=now)
    conn.execute(update(Campaign).where(where).values(updated_at=now, **values))


def split(conn: Connection, chunk_id: int, campaign_id: int, now: datetime) -> None:
    """Replace a refused chunk by two halves (file order kept) that are sent on their own."""
    rows = (conn.scalars(
        select(Contact.row_number)
        .where(Contact.chunk_id == chunk_id, Contact.status == ContactStatus.PENDING.value)
        .order_by(Contact.row_number)
    )).all()
    if is_postgres(conn):
        # Two splits of one campaign at once would pick the same new seq: take turns.
        conn.execute(select(Campaign.id).where(Campaign.id == campaign_id).with_for_update())
    next_seq = conn.scalar(select(func.max(Chunk.seq)).where(Chunk.campaign_id == campaign_id)) or 0
    parent = conn.execute(select(Chunk.timezones, Chunk.window_start_at, Chunk.window_end_at)
                          .where(Chunk.id == chunk_id)).one()
    for offset, part in enumerate(halves(rows), start=1):
        child_id = conn.execute(
            insert(Chunk).returning(Chunk.id).values(
                campaign_id=campaign_id, seq=next_seq + offset, parent_id=chunk_id, status=ChunkStatus.PENDING.value,
                contact_count=len(part), attempts=0, created_at=now, updated_at=now, timezones=parent.timezones,
                window_start_at=parent.window_start_at, window_end_at=parent.window_end_at)
        ).scalar_one()
        conn.execute(
            update(Contact)
            .where(Contact.chunk_id == chunk_id, Contact.status == ContactStatus.PENDING.value,
                   Contact.row_number.between(part[0], part[-1]))
            .values(chunk_id=child_id)
        )


# -- unknown chunks that Plum's call results prove queued ------------------------------

RECONCILED_NOTE = ("a call result arrived on this chunk's result_url at {at:%Y-%m-%d %H:%M:%S} UTC, so Plum had "
                   "queued it: reconciled from unknown to succeeded")


def reconcile_called(conn: Connection, chunk_ids: list[int], now: datetime) -> list[int]:
    """Unknown chunks with a call result on their result_url were queued by Plum: each becomes
    succeeded (contacts queued) with a ``reconciled`` submission row dated by its first callback.
    Returns the chunks reconciled."""
    if not chunk_ids:
        return []
    found = conn.execute(
        select(Chunk.id, Chunk.campaign_id, Chunk.attempts, Chunk.contact_count, func.min(CallResult.received_at))
        .join(CallResult, CallResult.chunk_id == Chunk.id)
        .where(Chunk.id.in_(chunk_ids), Chunk.status == ChunkStatus.UNKNOWN.value,
               CallResult.campaign_id == Chunk.campaign_id)
        .group_by(Chunk.id, Chunk.campaign_id, Chunk.attempts, Chunk.contact_count)).all()
    done = []
    for chunk_id, campaign_id, attempts, contact_count, received_at in found:
        note = RECONCILED_NOTE.format(at=received_at)
        moved = move_chunks(conn, Chunk.id == chunk_id, (ChunkStatus.UNKNOWN,), ChunkStatus.SUCCEEDED, now,
                            finished_at=now, last_error=note, lease_owner=None, lease_expires_at=None)
        if not moved:
            continue
        conn.execute(insert(Submission).values(
            campaign_id=campaign_id, chunk_id=chunk_id, attempt=attempts, worker=None, started_at=received_at,
            finished_at=received_at, outcome=Outcome.RECONCILED.value, error=note, contact_count=contact_count))
        remember_queued(conn, chunk_id, campaign_id, now)
        refresh(conn, campaign_id, now)
        _complete_if_clean(conn, campaign_id, now)
        done.append(chunk_id)
    return done


def _complete_if_clean(conn: Connection, campaign_id: int, now: datetime) -> None:
    """A campaign that finished with errors only because of unknown chunks is completed once
    call results reconciled them all."""
    campaign = hot_sql(conn).campaign_state.run(conn, {"campaign_id": campaign_id}).first()
    if campaign is None or campaign.status != CampaignStatus.COMPLETED_WITH_ERRORS.value:
        return
    counts = dict(conn.execute(select(Chunk.status, func.count()).where(Chunk.campaign_id == campaign_id)
                               .group_by(Chunk.status)).all())
    if finished_status(CampaignStatus.RUNNING.value, campaign.ingested_at, campaign.contacts_valid,
                       counts) == CampaignStatus.COMPLETED.value:
        conn.execute(update(Campaign).where(Campaign.id == campaign_id).values(
            status=CampaignStatus.COMPLETED.value, status_seen=CampaignStatus.COMPLETED.value, updated_at=now,
            last_error="its unknown chunks were all reconciled from call results"))


# -- counters and the end of a campaign ----------------------------------------------


def refresh_if_settled(conn: Connection, campaign_id: int, now: datetime) -> None:
    """After one outcome: finish the campaign at once when nothing is left open.

    Counters of a campaign still sending are refreshed by every tick; doing it
    after every request cost three queries per request.
    """
    if is_postgres(conn):
        # Lock before looking: else this answer and a concurrent close of the unsent chunks (a
        # cancel) each see the other's chunks as still open or not yet answered, both skip or
        # miscount, and the campaign is left with stale counters (seen: 30 queued for 40).
        hot_sql(conn).lock_campaign.run(conn, {"campaign_id": campaign_id})
    still_open = hot_sql(conn).still_open.run(conn, {"campaign_id": campaign_id}).scalar()
    if still_open is None:
        refresh(conn, campaign_id, now)


def refresh(conn: Connection, campaign_id: int, now: datetime) -> None:
    """Recompute the row's chunk counters from the chunks table; finish it when nothing is open."""
    if is_postgres(conn):
        # Counting and writing must be one step per campaign: two daemons refreshing at once
        # once let an older count land after the finish (completed, with 100 contacts short).
        conn.execute(select(Campaign.id).where(Campaign.id == campaign_id).with_for_update())
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for status, count, contacts in (conn.execute(
        select(Chunk.status, func.count(), func.coalesce(func.sum(Chunk.contact_count), 0))
        .where(Chunk.campaign_id == campaign_id).group_by(Chunk.status)
    )).all():
        counts[status], sizes[status] = count, int(contacts)
    campaign = (conn.execute(
        select(Campaign.status, Campaign.ingested_at, Campaign.contacts_valid, Campaign.last_error)
        .where(Campaign.id == campaign_id)
    )).first()
    if campaign is None:
        return
    values: dict[str, Any] = {f"chunks_{s}": counts.get(s, 0)
                              for s in ("succeeded", "failed", "rejected", "unknown", "expired", "cancelled")}
    values.update(
        chunks_pending=sum(counts.get(s, 0) for s in OPEN_CHUNK),
        chunks_total=sum(n for s, n in counts.items() if s != ChunkStatus.SPLIT.value),
        contacts_queued=sizes.get(ChunkStatus.SUCCEEDED.value, 0),
        updated_at=now,
    )
    finished = finished_status(campaign.status, campaign.ingested_at, campaign.contacts_valid, counts)
    if finished is not None:
        values.update(status=finished, finished_at=now)  # status_seen stays: the tick logs the finish
        if finished == CampaignStatus.COMPLETED_WITH_ERRORS.value and not campaign.last_error:
            values["last_error"] = summarize_errors(counts, campaign.contacts_valid)
    conn.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))


def finished_status(status: str, ingested_at: datetime | None, valid: int, counts: dict[str, int]) -> str | None:
    """A running campaign whose chunks are all final is completed, or completed with errors."""
    if status != CampaignStatus.RUNNING.value or ingested_at is None:
        return None
    if any(counts.get(s, 0) for s in OPEN_CHUNK):
        return None
    clean = {ChunkStatus.SUCCEEDED.value, ChunkStatus.SPLIT.value}
    if valid and counts and all(s in clean for s in counts):
        return CampaignStatus.COMPLETED.value
    return CampaignStatus.COMPLETED_WITH_ERRORS.value


def summarize_errors(counts: dict[str, int], valid: int) -> str:
    if not valid:
        return "no valid contacts in the file"
    if not counts:
        return "no contact could be called: none has a calling window before end_at (out_of_window)"
    parts = [f"{counts[s]} {s}" for s in ("failed", "rejected", "unknown", "expired", "cancelled") if counts.get(s)]
    return "chunks not queued: " + ", ".join(parts)
