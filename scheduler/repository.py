"""Every query the program makes. Nothing outside this module touches a session.

Methods return detached ORM rows (plain values once returned) or small
dataclasses; callers never see a session or a connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Collection, NamedTuple, Sequence, TypeVar, cast

from sqlalchemy import and_, case, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .db import READ_ONLY, create_sync_sqlite_engine, describe_connect_error
from .errors import CampaignGone, DatabaseError, IngestionLost, LedgerKept, NotFound, UserError
from .models import (
    FINAL_CAMPAIGN_STATUSES,
    Campaign,
    CampaignDeletion,
    CampaignFile,
    CampaignStatus,
    Chunk,
    ChunkBody,
    CallResult,
    CallResultCount,
    ChunkStatus,
    Contact,
    ContactStatus,
    PlumAccount,
    Submission,
    Suppression,
    Worker,
)
from . import ledger
from .ledger import ClaimedChunk
from .retry import NextStep
from .stored_files import PackedFile
from .verify import VerifyQueries
from .console.queries import ConsoleQueries, PageQueries

if TYPE_CHECKING:
    from .breaker import Snapshot as AccountState
    from .callbacks import CallDetails
    from .insight import SubmitResult


T = TypeVar("T")
log = logging.getLogger("scheduler.repository")
# The event loop's SQLite connection does not checkpoint (see _Store._inline); after this many
# of its commits the ledger thread does (~10-20 pages each: about SQLite's own 1,000 pages).
CHECKPOINT_EVERY_COMMITS = 100
# An inline transaction (see _Store._inline) holds the event loop at most this long: past it,
# SQLite interrupts it, it is rolled back and run in the ledger thread, as is that function for
# the next INLINE_COOLDOWN_SECONDS (a large suppression list or frequency-cap table, a chunk's
# worth of emptied chunks to cancel). A claim at chunk 1000 takes ~3 ms.
INLINE_BUDGET_SECONDS = 0.02
INLINE_COOLDOWN_SECONDS = 30.0
PROGRESS_EVERY_OPCODES = 10_000  # ~0.1-0.5 ms of SQLite work between looks at the clock
WORKER_MEMORY = timedelta(days=7)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class NewCampaign:
    name: str
    survey_id: str
    instance_id: str
    contacts_path: str
    start_at: datetime
    end_at: datetime
    max_attempts: int = 1
    reattempt_wait: int | None = None
    result_url: str | None = None
    chunk_size: int | None = None
    calling_window_start: str | None = None
    calling_window_end: str | None = None
    excluded_weekdays: str | None = None
    status: str = CampaignStatus.SCHEDULED.value


@dataclass
class CampaignReport:
    campaign: Campaign
    chunks_by_status: dict[str, int] = field(default_factory=dict)
    contacts_by_status: dict[str, int] = field(default_factory=dict)
    submissions_by_code: dict[str, int] = field(default_factory=dict)
    submissions_by_outcome: dict[str, int] = field(default_factory=dict)
    unknown_chunks: list[Chunk] = field(default_factory=list)
    call_results_by_status: dict[str, int] = field(default_factory=dict)
    first_request_at: datetime | None = None
    last_request_at: datetime | None = None
    zones: list["ZoneSummary"] = field(default_factory=list)
    plum_state: str | None = None  # "waiting for Plum since ..." while the account's breaker is open
    contacts_file: tuple[str, int, str] | None = None  # (name, bytes, sha256) when stored in the database


@dataclass
class ZoneSummary:
    """With calling windows: a campaign's chunks for one set of time zones."""

    zones: tuple[str, ...]
    chunks: int = 0
    contacts: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    # the earliest window still to come (a chunk pending), else the span of the windows used
    window: tuple[datetime, datetime] | None = None
    _next: tuple[datetime, datetime] | None = None

    def add(self, status: str, chunks: int, contacts: int, start: datetime, end: datetime) -> None:
        self.chunks += chunks
        self.contacts += contacts
        self.by_status[status] = self.by_status.get(status, 0) + chunks
        if status in (ChunkStatus.PENDING.value, ChunkStatus.SUBMITTING.value):
            self._next = min(self._next or (start, end), (start, end))
        span = (start, end) if self.window is None else (min(self.window[0], start), max(self.window[1], end))
        self.window = self._next or span


NO_WINDOW_LEFT = "no calling window left before end_at for this chunk's time zones"


class UnsentWindow(NamedTuple):
    """A pending chunk with a calling window, and what choosing its window again needs."""

    chunk_id: int
    campaign_id: int
    timezones: str | None
    window_start_at: datetime
    window_end_at: datetime
    calling_window_start: str | None
    calling_window_end: str | None
    excluded_weekdays: str | None
    start_at: datetime
    end_at: datetime


class ExportRow(NamedTuple):
    row_number: int
    raw_phone: str
    phone: str | None
    status: str
    reason: str | None
    extra: str | None
    seq: int | None
    outcome: str | None
    status_code: int | None
    call_status: str | None
    duration_seconds: int | None


class WorkerActivity(NamedTuple):
    """A daemon's heartbeat row and what it is doing (for `insight-scheduler workers`)."""

    worker: Worker
    in_flight: int
    requests_last_minute: int


@dataclass(frozen=True)
class WindowMove:
    chunk_id: int
    old: tuple[datetime, datetime]
    new: tuple[datetime, datetime] | None  # None: no window left

# Which statuses an admin command may move a campaign from.
PAUSABLE = {CampaignStatus.SCHEDULED.value, CampaignStatus.RUNNING.value}
RESUMABLE = {CampaignStatus.PAUSED.value, CampaignStatus.DRAFT.value}
FINAL = {s.value for s in FINAL_CAMPAIGN_STATUSES}


class _Store:
    """Transactions on the engine it is given, which it then owns: ``close()`` releases the
    engine and what it opened itself (the SQLite ledger thread and its second engine)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext())
        self._sqlite_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._sqlite_sync: Engine | None = None
        self._thread_conn: Connection | None = None  # the ledger thread's own
        self._inline_conn: Connection | None = None  # the event loop's own (see _inline)
        self._inline_commits = 0  # since the last checkpoint was asked of the ledger thread
        self._checkpointing: asyncio.Task[None] | None = None
        self._inline_deadline: float | None = None  # monotonic time the running inline transaction must end by
        self._inline_off_until: dict[Callable[..., Any], float] = {}  # functions that went over their budget
        self._closing = False

    async def close(self) -> None:
        """Release the ledger thread, its SQLite engine and the engine (idempotent)."""
        self._closing = True  # no inline transaction nor checkpoint starts any more
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        pool, self._sqlite_pool = self._sqlite_pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
        for conn in (self._thread_conn, self._inline_conn):
            if conn is not None:
                conn.close()
        self._thread_conn = self._inline_conn = None
        sync, self._sqlite_sync = self._sqlite_sync, None
        if sync is not None:
            sync.dispose()
        await self.engine.dispose()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction (BEGIN IMMEDIATE on SQLite).

        SQLite has one writer at a time. Writers of this process queue on an
        asyncio lock instead of in SQLite's busy handler, whose growing sleeps
        (up to 100 ms each) throttled concurrent requests several-fold.
        """
        async with self._write_lock, self._translate(), self._sessions() as session, session.begin():
            yield session

    async def _ledger(self, function: Callable[..., T], *args: Any, read_only: bool = False,
                      inline: bool = False) -> T:
        """One transaction of ledger statements, run in a single hop.

        SQLite: a dedicated thread with its own sqlite3 connection runs the whole
        transaction at C speed; ``inline`` (the send path's short transactions) runs it on
        the event loop instead when the database's write lock is free (see ``_inline``).
        PostgreSQL: ``run_sync`` on an async connection.
        """
        lock = contextlib.nullcontext() if read_only else self._write_lock
        async with lock, self._translate():
            if self.engine.dialect.name == "sqlite":
                if inline:
                    ran, result = self._inline(function, args, read_only)
                    if ran:
                        return cast(T, result)
                return await asyncio.get_running_loop().run_in_executor(
                    self._sqlite_thread(), self._in_sqlite_thread, function, args, read_only)
            async with self.engine.begin() as conn:
                return await conn.run_sync(function, *args)

    def _inline(self, function: Callable[..., T], args: tuple[Any, ...], read_only: bool) -> tuple[bool, T | None]:
        """A short transaction run here, on the event loop, on a connection that never waits for
        SQLite's lock: (False, None) when another process holds it (an admin's sqlite3, the CLI,
        another daemon), and the ledger thread, which waits, runs it instead.

        Why: handing a transaction to the ledger thread and back costs ~110 µs of CPU (two
        thread wake-ups) against ~20 µs for the transaction itself; the send path runs two per
        request (issue 15). These transactions touch a chunk's rows (~3 ms at chunk 1000; past
        INLINE_BUDGET_SECONDS SQLite interrupts them and the ledger thread runs them) and never
        wait: SQLite's lock is taken at BEGIN IMMEDIATE, or not at all.
        Checkpoints (copying the WAL into the database, with an fsync) are left to the ledger
        thread (``CHECKPOINT_EVERY_COMMITS``), not done on the event loop.
        """
        if self._closing or self._inline_off_until.get(function, 0.0) > time.monotonic():
            return False, None
        conn = self._inline_conn
        if conn is None or conn.closed or conn.invalidated:
            self._sqlite_thread()
            assert self._sqlite_sync is not None
            conn = self._inline_conn = self._sqlite_sync.connect()
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA busy_timeout=0")
            raw.execute("PRAGMA wal_autocheckpoint=0")
            raw.set_progress_handler(self._past_deadline, PROGRESS_EVERY_OPCODES)
        if conn.get_execution_options().get(READ_ONLY, False) != read_only:
            conn.execution_options(**{READ_ONLY: read_only})
        self._inline_deadline = time.monotonic() + INLINE_BUDGET_SECONDS
        try:
            with conn.begin():
                result = function(conn, *args)
        except DBAPIError as exc:
            if _sqlite_busy(exc):  # rolled back: nothing of it stays
                return False, None
            if _sqlite_interrupted(exc):  # over its budget: rolled back, the ledger thread runs it
                self._inline_off_until[function] = time.monotonic() + INLINE_COOLDOWN_SECONDS
                log.info("%s took over %g ms of the event loop: it runs in the ledger thread for %g s",
                         getattr(function, "__name__", function), INLINE_BUDGET_SECONDS * 1000,
                         INLINE_COOLDOWN_SECONDS)
                return False, None
            self._inline_conn = None
            conn.invalidate()
            raise
        except BaseException:
            self._inline_conn = None  # (see _in_sqlite_thread)
            conn.invalidate()
            raise
        finally:
            self._inline_deadline = None
        if not read_only:
            self._inline_commits += 1
            if self._inline_commits >= CHECKPOINT_EVERY_COMMITS and self._checkpointing is None:
                self._inline_commits = 0
                self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())
        return True, result

    def _past_deadline(self) -> bool:
        """SQLite's progress handler on the event loop's connection: a true answer interrupts
        the statement (SQLITE_INTERRUPT) once the transaction is past its budget."""
        deadline = self._inline_deadline
        return deadline is not None and time.monotonic() > deadline

    async def _checkpoint(self) -> None:
        """The ledger thread copies the WAL's pages into the database, holding this process's
        write lock: with a commit in between, the checkpoint would never catch up with the WAL's
        end, and SQLite starts a WAL over only once it has (under steady sending it grew by
        ~100 KB per request, without end)."""
        try:
            async with self._write_lock:
                if self._closing:
                    return
                await asyncio.get_running_loop().run_in_executor(self._sqlite_thread(), self._checkpoint_in_thread)
        except Exception as exc:  # noqa: BLE001 - a checkpoint is housekeeping: the next one catches up
            log.warning("SQLite checkpoint of the ledger's WAL failed (tried again later): %s", exc)
        finally:
            self._checkpointing = None

    def _checkpoint_in_thread(self) -> None:
        raw = self._thread_connection().connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _sqlite_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._sqlite_pool is None:
            self._sqlite_sync = create_sync_sqlite_engine(self.engine)
            self._sqlite_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ledger")
        return self._sqlite_pool

    def _thread_connection(self) -> Connection:
        # The thread keeps its connection: a pool checkout and its reset for every transaction
        # cost about as much as a claim's statements.
        conn = self._thread_conn
        if conn is None or conn.closed or conn.invalidated:
            assert self._sqlite_sync is not None
            conn = self._thread_conn = self._sqlite_sync.connect()
        return conn

    def _in_sqlite_thread(self, function: Callable[..., T], args: tuple[Any, ...], read_only: bool) -> T:
        conn = self._thread_connection()
        if conn.get_execution_options().get(READ_ONLY, False) != read_only:  # setting it costs ~20 µs
            conn.execution_options(**{READ_ONLY: read_only})
        try:
            with conn.begin():
                return function(conn, *args)
        except BaseException:
            # A failed rollback can leave SQLite's transaction open, and every later BEGIN would
            # then fail on this connection: the next call opens a fresh one.
            self._thread_conn = None
            conn.invalidate()
            raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._translate(), self._sessions() as session:
            await session.connection(execution_options={READ_ONLY: True})
            yield session

    @asynccontextmanager
    async def _translate(self) -> AsyncIterator[None]:
        try:
            yield
        except OSError as exc:
            raise DatabaseError(describe_connect_error(self.engine, exc)) from None
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_connect_error(exc):
                raise DatabaseError(describe_connect_error(self.engine, exc)) from None
            raise

    async def _refresh(self, session: AsyncSession, campaign_id: int, now: datetime) -> None:
        """Counters and the end of a campaign, from inside an ORM transaction."""
        await session.flush()  # Core statements below must see (and not be undone by) pending ORM changes
        await (await session.connection()).run_sync(ledger.refresh, campaign_id, now)


class AdminQueries(_Store):
    # -- campaigns: admin commands -------------------------------------------------

    async def create_campaign(self, new: NewCampaign, contacts: PackedFile | None = None) -> Campaign:
        """The row, and with ``contacts`` its file's bytes (so any daemon on any host can read it)."""
        async with self._write() as session:
            row = Campaign(**new.__dict__)
            session.add(row)
            if contacts is not None:
                await session.flush()
                session.add(CampaignFile(campaign_id=row.id, file_name=contacts.file_name,
                                         size_bytes=contacts.size_bytes, sha256=contacts.sha256, data=contacts.data,
                                         stored_at=utcnow()))
        return row

    async def stored_contacts(self, campaign_id: int) -> CampaignFile | None:
        """The contacts file stored with the campaign, or None (rows inserted by SQL: read contacts_path)."""
        async with self._read() as session:
            return await session.get(CampaignFile, campaign_id)

    async def stored_contacts_summary(self, campaign_id: int) -> tuple[str, int, str] | None:
        """(file name, size, sha256) of the stored file, without its bytes."""
        async with self._read() as session:
            found = (await session.execute(
                select(CampaignFile.file_name, CampaignFile.size_bytes, CampaignFile.sha256)
                .where(CampaignFile.campaign_id == campaign_id))).first()
        return None if found is None else (found[0], int(found[1]), found[2])

    async def get_campaign(self, campaign_id: int) -> Campaign:
        async with self._read() as session:
            row = await session.get(Campaign, campaign_id)
        if row is None:
            raise NotFound(f"no campaign with id {campaign_id}")
        return row

    async def list_campaigns(self) -> Sequence[Campaign]:
        async with self._read() as session:
            return (await session.scalars(select(Campaign).order_by(Campaign.id))).all()

    async def change_status(self, campaign_id: int, target: CampaignStatus) -> Campaign:
        """pause / resume / cancel from the CLI, refusing moves that make no sense."""
        allowed = {
            CampaignStatus.PAUSED: PAUSABLE,
            CampaignStatus.SCHEDULED: RESUMABLE,
            CampaignStatus.CANCELLED: {s.value for s in CampaignStatus} - FINAL,
        }[target]
        async with self._write() as session:
            row = await session.get(Campaign, campaign_id)
            if row is None:
                raise NotFound(f"no campaign with id {campaign_id}")
            if row.status not in allowed:
                raise UserError(
                    f"campaign {campaign_id} is {row.status}; only {', '.join(sorted(allowed))} "
                    f"campaigns can become {target.value}"
                )
            row.status = target.value
            if target is CampaignStatus.CANCELLED:
                await session.flush()
                now = utcnow()
                await (await session.connection()).run_sync(
                    ledger.close_unsent, [campaign_id], ChunkStatus.CANCELLED, "the campaign is cancelled", now)
                await self._refresh(session, campaign_id, now)
        return row

    async def campaign_report(self, campaign_id: int, live: bool = False) -> CampaignReport:
        """``live=True`` (the console, every few seconds): contacts_by_status is left empty and call
        results come from their counters, so no contact or call result row of the campaign is read."""
        campaign = await self.get_campaign(campaign_id)
        report = CampaignReport(campaign=campaign)
        async with self._read() as session:
            report.chunks_by_status = await _count_by(session, Chunk.status, Chunk.campaign_id == campaign_id)
            if not live:
                report.contacts_by_status = await _count_by(session, Contact.status,
                                                            Contact.campaign_id == campaign_id)
            by_code = await _count_by(session, Submission.status_code, Submission.campaign_id == campaign_id)
            report.submissions_by_code = {("none" if k is None else str(k)): v for k, v in by_code.items()}
            report.submissions_by_outcome = await _count_by(
                session, Submission.outcome, Submission.campaign_id == campaign_id
            )
            if live:
                results = await _counted_call_results(session, campaign_id)
            else:
                results = await _count_by(session, CallResult.status, CallResult.campaign_id == campaign_id)
            # One final callback per call; Insight's body may carry no number, so count
            # results rather than matched contacts.
            results["awaiting"] = max(0, campaign.contacts_queued - sum(results.values()))
            report.call_results_by_status = results
            report.first_request_at, report.last_request_at = (await session.execute(
                select(func.min(Submission.started_at), func.max(Submission.started_at))
                .where(Submission.campaign_id == campaign_id))).one()
            report.zones = await _zone_summaries(session, campaign_id)
            report.unknown_chunks = list(
                (
                    await session.scalars(
                        select(Chunk)
                        .where(Chunk.campaign_id == campaign_id, Chunk.status == ChunkStatus.UNKNOWN.value)
                        .order_by(Chunk.seq)
                    )
                ).all()
            )
        return report


async def _counted_call_results(session: AsyncSession, campaign_id: int) -> dict[Any, int]:
    """What _count_by(CallResult.status) gives, from the counters the triggers keep (migration 0009)."""
    found = await session.execute(select(CallResultCount.status, CallResultCount.results)
                                  .where(CallResultCount.campaign_id == campaign_id, CallResultCount.results > 0))
    return {(status or None): int(count) for status, count in found.all()}


async def _zone_summaries(session: AsyncSession, campaign_id: int) -> list[ZoneSummary]:
    found = await session.execute(
        select(Chunk.timezones, Chunk.status, func.count(), func.coalesce(func.sum(Chunk.contact_count), 0),
               func.min(Chunk.window_start_at), func.max(Chunk.window_end_at))
        .where(Chunk.campaign_id == campaign_id, Chunk.timezones.is_not(None),
               Chunk.status != ChunkStatus.SPLIT.value)
        .group_by(Chunk.timezones, Chunk.status)
    )
    summaries: dict[str, ZoneSummary] = {}
    for zones, status, chunks, contacts, start, end in found.all():
        assert zones is not None and start is not None and end is not None  # set together at ingestion
        summary = summaries.setdefault(zones, ZoneSummary(tuple(zones.split())))
        summary.add(status, chunks, int(contacts), start, end)
    return sorted(summaries.values(), key=lambda z: (z.window or (datetime.max.replace(tzinfo=timezone.utc),), z.zones))


def _heartbeat(conn: Connection, worker: str, now: datetime) -> None:
    conn.execute(update(Worker).where(Worker.worker_id == worker).values(last_tick_at=now))


def _unsent_windows(conn: Connection) -> list[UnsentWindow]:
    found = conn.execute(
        select(Chunk.id.label("chunk_id"), Chunk.campaign_id, Chunk.timezones, Chunk.window_start_at,
               Chunk.window_end_at, Campaign.calling_window_start, Campaign.calling_window_end,
               Campaign.excluded_weekdays, Campaign.start_at, Campaign.end_at)
        .join(Campaign, Campaign.id == Chunk.campaign_id)
        .where(Chunk.status == ChunkStatus.PENDING.value, Chunk.window_end_at.is_not(None),
               Campaign.status.in_([CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value]))).all()
    return [UnsentWindow._make(row) for row in found]


def _status_counts(conn: Connection) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    def count_by(column: Any) -> dict[str, int]:
        return {key: count for key, count in conn.execute(select(column, func.count()).group_by(column)).all()}

    sums = conn.execute(select(
        func.coalesce(func.sum(Campaign.contacts_queued), 0),
        func.coalesce(func.sum(Campaign.contacts_valid - Campaign.contacts_queued), 0),
        func.coalesce(func.sum(Campaign.contacts_invalid), 0),
        func.coalesce(func.sum(Campaign.contacts_duplicate), 0))).one()
    contacts = dict(zip(("queued", "not_queued", "invalid", "duplicate"), (int(v) for v in sums)))
    return count_by(Chunk.status), contacts, count_by(Campaign.status)


async def _count_by(session: AsyncSession, column: Any, *where: Any) -> dict[Any, int]:
    rows = await session.execute(select(column, func.count()).where(*where).group_by(column))
    return {key: count for key, count in rows.all()}


def _sqlite_interrupted(exc: DBAPIError) -> bool:
    """The statement was stopped by the progress handler (SQLITE_INTERRUPT)."""
    return isinstance(exc.orig, sqlite3.Error) and getattr(exc.orig, "sqlite_errorcode", 0) == sqlite3.SQLITE_INTERRUPT


def _sqlite_busy(exc: DBAPIError) -> bool:
    """SQLite's lock is held by another connection (SQLITE_BUSY, or SQLITE_BUSY_SNAPSHOT &c.)."""
    return isinstance(exc.orig, sqlite3.Error) and (getattr(exc.orig, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _is_connect_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(word in text for word in CONNECT_ERROR_WORDS)


# What a driver says when the database is not answering (down, restarting, locked by an
# admin beyond the busy timeout): the daemon waits for it rather than failing a step.
CONNECT_ERROR_WORDS = ("connect", "unable to open database", "does not exist", "database is locked",
                       "database is busy", "the database system is", "terminating connection",
                       "connection was closed", "connection is closed", "server closed the connection")


# -- the daemon's queries ----------------------------------------------------------

# (row_number, raw_phone, phone, extra JSON, status, reason, chunk_seq)
ContactTuple = tuple[int, str, "str | None", str, str, "str | None", "int | None"]
NewChunk = tuple[int, "str | None", "datetime | None", "datetime | None"]  # seq, time zones, window
ChunkBodyTuple = tuple[int, int, bytes]  # seq, contacts, request CSV (chunking.BodyBuilder)
CONTACT_COLUMNS = ("campaign_id", "row_number", "raw_phone", "phone", "extra", "status", "reason", "chunk_id")


async def _bulk_insert_contacts(conn: Any, records: list[tuple[Any, ...]]) -> None:
    if not records:
        return
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table("contacts", records=records, columns=CONTACT_COLUMNS)
        return
    marks = ", ".join("?" for _ in CONTACT_COLUMNS)
    await conn.exec_driver_sql(f"INSERT INTO contacts ({', '.join(CONTACT_COLUMNS)}) VALUES ({marks})", records)


class DaemonQueries(_Store):
    """Mixed into Repository: what the tick, ingestion and dispatcher ask."""

    # -- start-up and housekeeping -------------------------------------------------

    async def abandon_submitting(self, now: datetime, dead_before: datetime, also_dead: Collection[str] = ()) -> int:
        """Chunks whose lease ran out, or whose daemon is dead (no heartbeat since ``dead_before``;
        at start-up also this daemon's id in an earlier life), become unknown: their calls may
        have been queued. A dead daemon's unfinished ingestion is released for another to restart."""
        # The tick's statements run in one hop each (the ledger thread on SQLite), not through the
        # ORM statement by statement: every tick cost ~20 ms of the event loop (issue 15).
        return await self._ledger(ledger.abandon_submitting, now, dead_before, list(also_dead))

    async def housekeeping(self, now: datetime, plum_down_since: datetime | None = None) -> None:
        """Honour admins' edits and the clock: cancel, expire, refresh counters, finish."""
        await self._ledger(ledger.housekeeping, now, plum_down_since)

    async def unsent_windows(self) -> list[UnsentWindow]:
        """Pending chunks with a calling window, of running or paused campaigns: rows with
        their window and what choosing it again needs (the campaign's window columns)."""
        return await self._ledger(_unsent_windows, read_only=True)

    async def move_windows(self, moves: list[WindowMove], now: datetime,
                           plum_down_since: datetime | None = None) -> None:
        """Give each chunk its new window; a chunk with none left expires and its contacts
        are ``out_of_window``. A chunk claimed or moved since it was read is left alone."""
        async with self._write() as session:
            touched: set[int] = set()
            conn = await session.connection()
            for move in moves:
                still = and_(Chunk.id == move.chunk_id, Chunk.status == ChunkStatus.PENDING.value,
                             Chunk.window_start_at == move.old[0], Chunk.window_end_at == move.old[1])
                if move.new is not None:
                    await session.execute(update(Chunk).where(still).values(
                        window_start_at=move.new[0], window_end_at=move.new[1], updated_at=now))
                    continue
                moved = await conn.run_sync(
                    ledger.move_chunks, still, (ChunkStatus.PENDING,), ChunkStatus.EXPIRED, now,
                    contacts=ContactStatus.OUT_OF_WINDOW, reason=NO_WINDOW_LEFT, finished_at=now,
                    last_error=ledger.outage_note(NO_WINDOW_LEFT, plum_down_since))
                touched.update(campaign_id for _, campaign_id in moved)
            for campaign_id in touched:
                await self._refresh(session, campaign_id, now)

    # -- campaigns: picking up and ingesting ----------------------------------------

    async def campaigns_to_start(self, now: datetime, worker: str = "") -> list[Campaign]:
        """Scheduled and due, or running but never finished ingesting (a daemon died, or this
        ``worker``'s own ingestion stopped: the caller knows it is not running it)."""
        async with self._read() as session:
            rows = (
                await session.scalars(
                    select(Campaign).where(
                        (Campaign.status == CampaignStatus.SCHEDULED.value)
                        | ((Campaign.status == CampaignStatus.RUNNING.value) & Campaign.ingested_at.is_(None))
                    )
                )
            ).all()
        return [row for row in rows if isinstance(row.start_at, datetime) and row.start_at <= now and (
            row.status == CampaignStatus.SCHEDULED.value or _ingestion_abandoned(row, now, worker))]

    async def claim_campaign(self, campaign_id: int, worker: str, now: datetime, lease_until: datetime) -> Campaign | None:
        """Move a due campaign to running; whoever gets the row ingests it."""
        async with self._write() as session:
            row = await session.get(Campaign, campaign_id, with_for_update=_pg_only(session))
            if row is None:
                return None
            takeover = row.status == CampaignStatus.RUNNING.value and row.ingested_at is None and (
                isinstance(row.start_at, datetime) and row.start_at <= now and _ingestion_abandoned(row, now, worker)
            )
            if not (row.status == CampaignStatus.SCHEDULED.value or takeover):
                return None
            row.status = row.status_seen = CampaignStatus.RUNNING.value
            row.started_at = row.started_at or now
            row.finished_at = None
            row.last_error = None  # a resume means the admin dealt with it
            if row.ingested_at is None:
                row.lease_owner, row.lease_expires_at = worker, lease_until
            await self._refresh(session, campaign_id, now)
        return row

    async def extend_campaign_lease(self, campaign_id: int, worker: str, lease_until: datetime) -> None:
        async with self._write() as session:
            await _still_ours(session, campaign_id, worker)
            await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.lease_owner == worker)
                .values(lease_expires_at=lease_until)
            )

    async def fail_campaign(self, campaign_id: int, error: str, now: datetime, worker: str | None = None) -> None:
        """The campaign cannot go on (its row or file is unusable); its unsent chunks are cancelled.
        With ``worker``: only while that daemon still holds the ingestion."""
        async with self._write() as session:
            if worker is not None:
                await _still_ours(session, campaign_id, worker)
            await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(status=CampaignStatus.FAILED.value, status_seen=CampaignStatus.FAILED.value,
                        last_error=error, finished_at=now, lease_owner=None, lease_expires_at=None, updated_at=now)
            )
            conn = await session.connection()
            await conn.run_sync(ledger.close_unsent, [campaign_id], ChunkStatus.CANCELLED, error, now)
            await self._refresh(session, campaign_id, now)

    # -- campaigns: what admins changed ----------------------------------------------

    async def campaigns_to_review(self) -> Sequence[Campaign]:
        """Campaigns not yet final, and any whose status changed since a daemon last looked."""
        async with self._read() as session:
            return (await session.scalars(select(Campaign).where(
                Campaign.status.not_in(ledger.FINAL_STATUSES) | Campaign.status_seen.is_(None)
                | (Campaign.status_seen != Campaign.status)).order_by(Campaign.id))).all()

    async def see_status(self, campaign_id: int, seen: str | None, status: str) -> bool:
        """Record that a daemon saw ``status``; True for the one daemon that records it (it logs)."""
        was = Campaign.status_seen.is_(None) if seen is None else Campaign.status_seen == seen
        async with self._write() as session:
            result = await session.execute(
                update(Campaign).where(Campaign.id == campaign_id, Campaign.status == status, was).values(
                    status_seen=status,
                    last_error=case((Campaign.last_error.like("unknown status %"), None), else_=Campaign.last_error)))
        return bool(result.rowcount)  # type: ignore[attr-defined]  # UPDATE results have it

    async def flag_campaign(self, campaign_id: int, problem: str) -> bool:
        """Put ``problem`` in last_error; True when it was not there already (so it is logged once)."""
        async with self._write() as session:
            result = await session.execute(
                update(Campaign).where(Campaign.id == campaign_id,
                                       (Campaign.last_error.is_(None)) | (Campaign.last_error != problem))
                .values(last_error=problem))
        return bool(result.rowcount)  # type: ignore[attr-defined]  # UPDATE results have it

    async def take_deletions(self, now: datetime) -> Sequence[CampaignDeletion]:
        """Campaign rows deleted since a daemon last looked (recorded by a trigger); each is
        returned to one daemon only."""
        async with self._write() as session:
            return (await session.scalars(
                update(CampaignDeletion).where(CampaignDeletion.reported_at.is_(None))
                .values(reported_at=now).returning(CampaignDeletion))).all()

    async def clear_ingestion(self, campaign_id: int, worker: str) -> None:
        """Remove what a dead ingestion left behind; nothing of it was ever sent. A ledger with
        submissions is never removed (SQLite's INSERT OR REPLACE can put a new row on an old id)."""
        async with self._write() as session:
            await _still_ours(session, campaign_id, worker)
            sent = await session.scalar(select(func.count()).where(Submission.campaign_id == campaign_id))
            if sent:
                raise LedgerKept(
                    f"campaign id {campaign_id} already has {sent} submission(s) to Plum from an earlier row with "
                    "this id (replaced, e.g. by INSERT OR REPLACE); its ledger is kept and nothing is read or sent: "
                    "insert the campaign as a new row without an id")
            await session.execute(delete(Contact).where(Contact.campaign_id == campaign_id))
            await session.execute(delete(Submission).where(Submission.campaign_id == campaign_id))
            await session.execute(delete(Chunk).where(Chunk.campaign_id == campaign_id))

    async def add_ingested_batch(self, campaign_id: int, worker: str, new_chunks: list[NewChunk],
                                 contacts: list[ContactTuple], bodies: Sequence[ChunkBodyTuple] = (),
                                 body_format: str = "") -> None:
        """New chunks ``(seq, timezones, window_start_at, window_end_at)``, contacts
        ``(row_number, raw_phone, phone, extra, status, reason, chunk_seq)`` and the request
        bodies ``(seq, contacts, csv)`` of chunks filled (built under ``body_format``).

        The hot path of a million-row ingestion: rows go to the driver as tuples
        (executemany on SQLite, COPY on PostgreSQL), not through the ORM.
        """
        async with self._write() as session:
            now = utcnow()
            await _still_ours(session, campaign_id, worker)
            if new_chunks:
                await session.execute(
                    insert(Chunk),
                    [dict(campaign_id=campaign_id, seq=seq, contact_count=0, status=ChunkStatus.PENDING.value,
                          attempts=0, created_at=now, updated_at=now, timezones=zones, window_start_at=start,
                          window_end_at=end) for seq, zones, start, end in new_chunks],
                )
            seqs = {c[6] for c in contacts if c[6] is not None} | {seq for seq, _, _ in bodies}
            ids: dict[int, int] = {}
            if seqs:
                rows = await session.execute(
                    select(Chunk.seq, Chunk.id).where(Chunk.campaign_id == campaign_id,
                                                      Chunk.seq.in_(sorted(seqs)))
                )
                ids = {seq: chunk_id for seq, chunk_id in rows.all()}
            records = [(campaign_id, *c[:6], None if c[6] is None else ids[c[6]]) for c in contacts]
            await _bulk_insert_contacts(await session.connection(), records)
            if bodies:
                await session.execute(insert(ChunkBody), [
                    dict(chunk_id=ids[seq], campaign_id=campaign_id, contacts=count, format=body_format, body=body)
                    for seq, count, body in bodies])

    async def finish_ingestion(
        self, campaign_id: int, worker: str, header_json: str, counts: dict[str, int], now: datetime,
        recent_since: datetime | None = None,
    ) -> None:
        async with self._write() as session:
            await _still_ours(session, campaign_id, worker)
            await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(ingested_at=now, contacts_header=header_json, lease_owner=None, lease_expires_at=None,
                        contacts_total=counts["total"], contacts_valid=counts["valid"],
                        contacts_invalid=counts["invalid"], contacts_duplicate=counts["duplicate"], updated_at=now)
            )
            removed = 0
            for numbers, status, reason in ledger.do_not_call(campaign_id, recent_since):
                result = await session.execute(
                    update(Contact)
                    .where(Contact.campaign_id == campaign_id, Contact.status == ContactStatus.PENDING.value,
                           Contact.phone.in_(numbers))
                    .values(status=status, reason=reason)
                )
                removed += result.rowcount  # type: ignore[attr-defined]  # UPDATE results have it
            pending = counts["valid"] - counts["out_of_window"]
            if not removed and await _bodies_hold(session, campaign_id, pending):
                # Each chunk's body counts its contacts: no need to read them all again (with
                # calling windows a chunk's contacts are spread through the table: +0.15 s/1M).
                sizes = select(ChunkBody.contacts).where(ChunkBody.chunk_id == Chunk.id).correlate(Chunk)
                await session.execute(update(Chunk).where(Chunk.campaign_id == campaign_id)
                                      .values(contact_count=sizes.scalar_subquery()))
            else:
                counted = (select(func.count())
                           .where(Contact.chunk_id == Chunk.id, Contact.status == ContactStatus.PENDING.value)
                           .correlate(Chunk).scalar_subquery())
                await session.execute(update(Chunk).where(Chunk.campaign_id == campaign_id)
                                      .values(contact_count=counted))
                # A body built with numbers taken out just now is not sent: the CSV is built from the
                # contacts.
                kept = select(Chunk.contact_count).where(Chunk.id == ChunkBody.chunk_id).scalar_subquery()
                await session.execute(delete(ChunkBody).where(ChunkBody.campaign_id == campaign_id,
                                                              ChunkBody.contacts != kept))
            await (await session.connection()).run_sync(
                ledger.move_chunks, and_(Chunk.campaign_id == campaign_id, Chunk.contact_count == 0),
                (ChunkStatus.PENDING,), ChunkStatus.CANCELLED, now, finished_at=now, last_error=ledger.NOTHING_LEFT)
            await self._refresh(session, campaign_id, now)

    # -- chunks: claiming and recording --------------------------------------------

    async def claim_next_chunk(
        self, worker: str, times: ledger.ClaimTimes, after_campaign_id: int = 0, recent_since: datetime | None = None,
        limits: ledger.AccountLimits | None = None,
    ) -> ClaimedChunk | ledger.AccountFull | None:
        """Atomically take the next ready chunk, round-robin over campaigns, within the account's
        limits shared by every daemon (in flight, and the next rate slot on the database's clock).

        PostgreSQL: FOR UPDATE SKIP LOCKED, so replicas never wait for or take
        each other's chunk. SQLite: the BEGIN IMMEDIATE transaction is the lock.
        """
        return await self._ledger(ledger.claim_next, worker, times, after_campaign_id, recent_since, limits,
                                  inline=True)

    async def claim_chunks(
        self, worker: str, times: ledger.ClaimTimes, after_campaign_id: int, recent_since: datetime | None,
        limits: ledger.AccountLimits | None, most: int, body_format: str = "",
    ) -> list[tuple[ClaimedChunk, ledger.Payload]] | ledger.AccountFull:
        """Up to ``most`` chunks in one transaction (see ``claim_next_chunk``), each with its own
        send slot and what it sends (``ledger.chunk_payload``: its stored request CSV when built
        under ``body_format``); never more than the account's free places in flight."""
        return await self._ledger(ledger.claim_to_send, worker, times, after_campaign_id, recent_since, limits,
                                  most, body_format, inline=True)

    async def push_rate_schedule(self, account: str, seconds: float) -> None:
        """A request left ``seconds`` after its slot: the account's later slots move as much."""
        await self._ledger(ledger.push_schedule, account, seconds, inline=True)

    async def database_clock(self) -> float:
        """The database's clock (Unix seconds), to learn its offset from this host's."""
        return await self._ledger(ledger.database_clock, read_only=True, inline=True)

    async def rate_wait(self, account: str) -> float:
        """Seconds until the account's next free send slot (any daemon may take it first)."""
        return await self._ledger(ledger.slot_wait, account, read_only=True, inline=True)

    async def release_claim(self, claim: ClaimedChunk, expired_at: datetime | None = None,
                            reason: str = ledger.ENDED_REASON) -> None:
        """Undo a claim whose request was never sent: back to pending (shutdown between
        claim and POST), or expired (the campaign's window closed meanwhile). Only while the
        claim is still its daemon's: a chunk declared unknown, resent or claimed by another
        daemon meanwhile is left as it is, with its submission rows."""
        values: dict[str, Any] = dict(attempts=Chunk.attempts - 1, lease_owner=None, lease_expires_at=None)
        target = ChunkStatus.PENDING
        if expired_at is not None:
            target = ChunkStatus.EXPIRED
            values.update(finished_at=expired_at, last_error=reason)
        async with self._write() as session:
            moved = await (await session.connection()).run_sync(
                ledger.move_chunks, and_(Chunk.id == claim.chunk_id, Chunk.claim_token == claim.token),
                (ChunkStatus.SUBMITTING,), target, expired_at or utcnow(), **values)
            if not moved:
                return
            await session.execute(delete(Submission).where(Submission.id == claim.submission_id))
            if expired_at is not None:
                await self._refresh(session, claim.campaign_id, expired_at)

    async def next_ready_at(self, now: datetime) -> datetime | None:
        """When the earliest waiting retry becomes ready (for the dispatcher's sleep)."""
        async with self._read() as session:
            return await session.scalar(
                select(func.min(Chunk.next_attempt_at))
                .join(Campaign, Campaign.id == Chunk.campaign_id)
                .where(Chunk.status == ChunkStatus.PENDING.value, Chunk.next_attempt_at > now,
                       Campaign.status == CampaignStatus.RUNNING.value)
            )

    async def record_outcome(self, claim: ClaimedChunk, worker: str, result: SubmitResult, plan: NextStep,
                             now: datetime, rejection_limit: int = 0, remember_calls: bool = True) -> NextStep | None:
        """The submission row gets the answer; the chunk and campaign move on, in one transaction.
        Returns the step applied (None: the chunk is no longer this claim's). ``remember_calls``:
        the frequency cap is on, so the numbers queued go to ``recent_calls``."""
        return await self._ledger(ledger.record, claim, worker, result, plan, now, rejection_limit, remember_calls,
                                  inline=True)

    async def record_then_claim(self, claim: ClaimedChunk, worker: str, result: SubmitResult, plan: NextStep,
                                now: datetime, rejection_limit: int, remember_calls: bool,
                                then: ledger.NextClaim) -> tuple[NextStep | None, ledger.Claimed]:
        """``record_outcome``, then ``claim_chunks`` with ``then``'s arguments, in one transaction
        (only where ``answers_claim``); returns the step applied and the chunks claimed."""
        assert self.answers_claim
        return await self._ledger(ledger.record_then_claim, claim, worker, result, plan, now, rejection_limit,
                                  remember_calls, then, inline=True)

    @property
    def answers_claim(self) -> bool:
        """An answer's transaction may also claim the next chunks (SQLite: one writer, so no lock
        order to get wrong; on PostgreSQL an answer and a claim keep their own transactions)."""
        return self.engine.dialect.name == "sqlite"

    async def remember_recent_calls(self, since: datetime) -> int:
        """The frequency cap was turned on: ``recent_calls`` learns what was queued since ``since``."""
        return await self._ledger(ledger.remember_recent, since)

    # -- admin decisions about unknown chunks ----------------------------------------

    async def resend_chunks(self, campaign_id: int | None, chunk_id: int | None, now: datetime) -> int:
        """An admin decided: send these unknown chunks again."""
        async with self._write() as session:
            where: list[ColumnElement[bool]] = []
            if chunk_id is not None:
                chunk = await session.get(Chunk, chunk_id)
                if chunk is None:
                    raise NotFound(f"no chunk with id {chunk_id}")
                if chunk.status != ChunkStatus.UNKNOWN.value:
                    raise UserError(f"chunk {chunk_id} is {chunk.status}; only unknown chunks can be resent")
                where.append(Chunk.id == chunk_id)
                campaign_id = chunk.campaign_id
            else:
                if await session.get(Campaign, campaign_id) is None:
                    raise NotFound(f"no campaign with id {campaign_id}")
                where.append(Chunk.campaign_id == campaign_id)
            moved = await (await session.connection()).run_sync(
                ledger.move_chunks, and_(*where), (ChunkStatus.UNKNOWN,), ChunkStatus.PENDING, now,
                next_attempt_at=None, lease_owner=None, lease_expires_at=None, finished_at=None,
                last_error="resent by an admin after an unknown outcome")
            if not moved:
                return 0
            assert campaign_id is not None
            campaign = await session.get(Campaign, campaign_id)
            if campaign is not None and campaign.status != CampaignStatus.RUNNING.value:
                campaign.status = CampaignStatus.SCHEDULED.value
                campaign.finished_at = None
            await self._refresh(session, campaign_id, now)
            return len(moved)


def _ingestion_abandoned(row: Campaign, now: datetime, worker: str = "") -> bool:
    """Nobody ingests it: its ingester was found dead (lease released), its lease ran out, or
    it is the asking daemon's own (which only asks when its ingestion stopped)."""
    return (row.lease_owner is None or row.lease_expires_at is None or row.lease_expires_at < now
            or bool(worker) and row.lease_owner == worker)


async def _bodies_hold(session: AsyncSession, campaign_id: int, pending: int) -> bool:
    """Every chunk of the campaign has its body, and the bodies hold the ``pending`` contacts
    ingestion counted: then each body's count is its chunk's."""
    bodies, held = (await session.execute(
        select(func.count(), func.coalesce(func.sum(ChunkBody.contacts), 0))
        .where(ChunkBody.campaign_id == campaign_id))).one()
    chunks = await session.scalar(select(func.count()).select_from(Chunk).where(Chunk.campaign_id == campaign_id))
    return bool(bodies == chunks and held == pending)


async def _still_ours(session: AsyncSession, campaign_id: int, worker: str) -> None:
    """The fence of every ingestion write: CampaignGone when an admin deleted the row,
    IngestionLost when another daemon took the ingestion over (this one was thought dead).
    On PostgreSQL the row stays locked until the transaction ends, so nothing written
    under the check is orphaned or written after a takeover."""
    query = select(Campaign.lease_owner).where(Campaign.id == campaign_id)
    if _pg_only(session):
        query = query.with_for_update(key_share=True)
    found = (await session.execute(query)).first()
    if found is None:
        raise CampaignGone(f"campaign {campaign_id} was deleted")
    if found.lease_owner != worker:
        raise IngestionLost(f"campaign {campaign_id}: its ingestion now belongs to {found.lease_owner or 'nobody'}")


def _pg_only(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


class ResultQueries(_Store):
    """Call results (result_url callbacks) and daemon heartbeats."""

    async def store_call_result(self, campaign_id: int, chunk_id: int, details: CallDetails, body: str,
                                phone_e164: str | None, now: datetime) -> str:
        """'stored', 'reconciled' (stored, and it proved an unknown chunk queued: now succeeded),
        'duplicate' (the same body again) or 'unknown_chunk'."""
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
        async with self._write() as session:
            # Locked (PostgreSQL): an answer moving it to unknown at the same moment would
            # otherwise not see this call result, and the chunk would stay unknown.
            chunk = await session.get(Chunk, chunk_id, with_for_update=_pg_only(session))
            if chunk is None or chunk.campaign_id != campaign_id:
                return "unknown_chunk"
            seen = await session.scalar(select(CallResult.id).where(
                CallResult.campaign_id == campaign_id, CallResult.chunk_id == chunk_id,
                CallResult.body_sha256 == digest))
            if seen is not None:
                return "duplicate"
            contact_id = None
            if phone_e164:
                contact_id = await session.scalar(select(Contact.id).where(
                    Contact.campaign_id == campaign_id, Contact.chunk_id == chunk_id, Contact.phone == phone_e164))
            session.add(CallResult(
                campaign_id=campaign_id, chunk_id=chunk_id, contact_id=contact_id, phone=phone_e164 or details.phone,
                status=details.status, attempts=details.attempts, duration_seconds=details.duration_seconds,
                queued_timestamp=details.queued_timestamp, last_attempt_timestamp=details.last_attempt_timestamp,
                received_at=now, body=body, body_sha256=digest))
            if chunk.status != ChunkStatus.UNKNOWN.value:
                return "stored"
            await session.flush()
            reconciled = await (await session.connection()).run_sync(ledger.reconcile_called, [chunk_id], now)
        return "reconciled" if reconciled else "stored"

    # -- Plum accounts (the circuit breaker as admins see it) ----------------------------

    async def save_account(self, account: str, state: AccountState, worker: str, now: datetime) -> None:
        """This daemon's view of the account's breaker (a row per account, last writer wins)."""
        values = dict(breaker="open" if state.open else "closed", open_since=state.since, probes=state.probes,
                      last_error=state.last_error, hold_until=state.hold_until, updated_at=now, updated_by=worker)
        async with self._write() as session:
            row = await session.get(PlumAccount, account, with_for_update=_pg_only(session))
            if row is None:
                session.add(PlumAccount(account=account, outages=int(state.open), **values))
                return
            if state.open and row.breaker != "open":
                row.outages += 1
            for name, value in values.items():
                setattr(row, name, value)

    async def plum_accounts(self) -> Sequence[PlumAccount]:
        async with self._read() as session:
            return (await session.scalars(select(PlumAccount).order_by(PlumAccount.account))).all()

    async def heartbeat(self, worker: str, now: datetime) -> None:
        await self._ledger(_heartbeat, worker, now, inline=True)

    async def register_worker(self, worker: str, now: datetime, host: str, pid: int, version: str,
                              process_space: str | None = None) -> None:
        """This process now runs under ``worker`` (the caller checked nobody alive does)."""
        async with self._write() as session:
            row = await session.get(Worker, worker)
            if row is None:
                row = Worker(worker_id=worker)
                session.add(row)
            row.started_at = row.last_tick_at = now
            row.host, row.pid, row.version, row.stopped_at = host, pid, version, None
            row.process_space = process_space
            # Each process has its own id by default: forget daemons gone for a week.
            await session.execute(delete(Worker).where(Worker.last_tick_at < now - WORKER_MEMORY))

    async def workers_in_space(self, process_space: str, seen_since: datetime) -> Sequence[Worker]:
        """Daemons of one pid space that ticked since ``seen_since`` (see identity.gone_at_once)."""
        async with self._read() as session:
            return (await session.scalars(select(Worker).where(
                Worker.process_space == process_space, Worker.last_tick_at >= seen_since))).all()

    async def worker_stopped(self, worker: str, now: datetime) -> None:
        async with self._write() as session:
            await session.execute(update(Worker).where(Worker.worker_id == worker).values(stopped_at=now))

    async def worker_activity(self, seen_since: datetime, minute_ago: datetime) -> list[WorkerActivity]:
        """Daemons that ticked since ``seen_since``, each with its requests in flight (chunks it
        is submitting) and the requests it started since ``minute_ago``."""
        async with self._read() as session:
            workers = (await session.scalars(select(Worker).where(Worker.last_tick_at >= seen_since)
                                             .order_by(Worker.started_at))).all()
            in_flight = dict((await session.execute(
                select(Chunk.lease_owner, func.count()).where(Chunk.status == ChunkStatus.SUBMITTING.value)
                .group_by(Chunk.lease_owner))).all())
            recent = dict((await session.execute(
                select(Submission.worker, func.count()).where(Submission.started_at >= minute_ago,
                                                              Submission.outcome != "reconciled")
                .group_by(Submission.worker))).all())
        return [WorkerActivity(w, int(in_flight.get(w.worker_id, 0)), int(recent.get(w.worker_id, 0)))
                for w in workers]

    async def requests_by_worker(self) -> dict[str, int]:
        """HTTP requests each daemon sent (submission rows, reconciliations aside)."""
        async with self._read() as session:
            return {str(worker): int(count) for worker, count in (await session.execute(
                select(Submission.worker, func.count()).where(Submission.outcome != "reconciled")
                .group_by(Submission.worker))).all()}

    async def get_worker(self, worker: str) -> Worker | None:
        async with self._read() as session:
            return await session.get(Worker, worker)

    async def last_tick(self, worker: str | None = None) -> datetime | None:
        async with self._read() as session:
            query = select(func.max(Worker.last_tick_at))
            if worker is not None:
                query = query.where(Worker.worker_id == worker)
            return await session.scalar(query)

    async def status_counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Chunks, contacts and campaigns by status, for the metrics (contacts from the
        campaign counters: grouping a million contacts every tick would cost too much)."""
        return await self._ledger(_status_counts, read_only=True)

    async def export_rows(self, campaign_id: int) -> AsyncIterator[ExportRow]:
        """Every contact of a campaign in file order, with its chunk's last submission
        and its latest call result; streamed, so a million rows never sit in memory."""
        last_submission = (
            select(Submission.chunk_id, func.max(Submission.id).label("id"))
            .where(Submission.campaign_id == campaign_id).group_by(Submission.chunk_id).subquery()
        )
        last_result = (
            select(CallResult.contact_id, func.max(CallResult.id).label("id"))
            .where(CallResult.campaign_id == campaign_id).group_by(CallResult.contact_id).subquery()
        )
        query = (
            select(Contact.row_number, Contact.raw_phone, Contact.phone, Contact.status, Contact.reason,
                   Contact.extra, Chunk.seq, Submission.outcome, Submission.status_code,
                   CallResult.status.label("call_status"), CallResult.duration_seconds)
            .outerjoin(Chunk, Chunk.id == Contact.chunk_id)
            .outerjoin(last_submission, last_submission.c.chunk_id == Contact.chunk_id)
            .outerjoin(Submission, Submission.id == last_submission.c.id)
            .outerjoin(last_result, last_result.c.contact_id == Contact.id)
            .outerjoin(CallResult, CallResult.id == last_result.c.id)
            .where(Contact.campaign_id == campaign_id)
            .order_by(Contact.row_number)
        )
        async with self._translate(), self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            result = await conn.stream(query)
            async for row in result:
                yield ExportRow._make(row)

    # -- the suppression list ---------------------------------------------------------

    async def add_suppressions(self, numbers: list[str], reason: str | None, source: str, now: datetime) -> int:
        """Add E.164 numbers; already listed ones are left as they are. Returns how many were new."""
        async with self._write() as session:
            known = set((await session.scalars(
                select(Suppression.number).where(Suppression.number.in_(numbers)))).all())
            new = [n for n in dict.fromkeys(numbers) if n not in known]
            session.add_all(Suppression(number=n, reason=reason, source=source, added_at=now) for n in new)
        return len(new)

    async def remove_suppression(self, number: str) -> bool:
        async with self._write() as session:
            result = await session.execute(delete(Suppression).where(Suppression.number == number))
        return bool(result.rowcount)  # type: ignore[attr-defined]  # UPDATE results have it

    async def list_suppressions(self) -> Sequence[Suppression]:
        async with self._read() as session:
            return (await session.scalars(select(Suppression).order_by(Suppression.added_at))).all()

    async def call_results_by_status(self, campaign_id: int) -> dict[str, int]:
        async with self._read() as session:
            return await _count_by(session, CallResult.status, CallResult.campaign_id == campaign_id)


class Repository(AdminQueries, DaemonQueries, ResultQueries, VerifyQueries, ConsoleQueries,
                 PageQueries):
    """The one door to the database."""
