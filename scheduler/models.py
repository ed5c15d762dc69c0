"""Tables. Column names of ``campaigns`` are a contract: admins edit those rows.

Times are instants. PostgreSQL stores them as ``timestamptz``, so an offset
or an admin's session ``TIME ZONE`` is honoured. SQLite stores canonical UTC
text (``YYYY-MM-DD HH:MM:SS.ffffff``) so that text comparisons in SQL order
instants correctly; triggers (migration 0006) rewrite whatever form an
admin writes into that form on commit. A value no form matches is left as written and read back as ``UnreadableTime``, so the
daemon can name it in ``last_error`` instead of crashing on it.
"""

from __future__ import annotations

import enum
import functools
import re
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite's rowid alias must be INTEGER; PostgreSQL gets BIGINT for contacts.
BigId = BigInteger().with_variant(Integer(), "sqlite")

SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# What SQLite holds once the triggers have run (the daemon writes 6 fraction digits).
_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,6})?")
# Server-side "now" for columns an admin's plain INSERT leaves out (SQLite's
# CURRENT_TIMESTAMP is UTC; the trigger makes it canonical).
NOW_DEFAULT = text("CURRENT_TIMESTAMP")


class UnreadableTime(str):
    """A time column's stored text that denotes no instant (an admin's typo in SQLite)."""


def parse_db_time(value: str) -> datetime:
    """A time given as text to the daemon: '2026-12-01 14:00:00' (UTC), ISO 'T', 'Z', offsets."""
    text_value = value.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text_value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def read_sqlite_time(value: str) -> datetime | UnreadableTime:
    """Only the canonical form is an instant: it is the only form SQL comparisons order right."""
    if not _CANONICAL.fullmatch(value):
        return UnreadableTime(value)
    try:
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    except ValueError:
        return UnreadableTime(value)


@functools.lru_cache(maxsize=256)
def _sqlite_text(utc: datetime) -> str:
    """The canonical text of a UTC time. Cached: a request binds the same few instants a dozen
    times, and strftime costs more than the rest of binding them. (Given UTC only: two local
    times a DST change repeats compare equal but are different instants.)"""
    return utc.replace(tzinfo=None).strftime(SQLITE_FORMAT)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python; ``timestamptz`` on PostgreSQL, canonical UTC text on SQLite."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | str | None, dialect: Dialect) -> datetime | str | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = parse_db_time(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        utc = value.astimezone(timezone.utc)
        return _sqlite_text(utc) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, (int, float)):  # SQLite: a number the triggers could not read
            return UnreadableTime(str(value))
        if isinstance(value, str):
            return read_sqlite_time(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class CampaignStatus(str, enum.Enum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


# What an admin writes (CLI or SQL); the others are the daemon's to write.
ADMIN_STATUSES = ("draft", "scheduled", "paused", "cancelled")

FINAL_CAMPAIGN_STATUSES = frozenset(
    {CampaignStatus.COMPLETED, CampaignStatus.COMPLETED_WITH_ERRORS, CampaignStatus.FAILED, CampaignStatus.CANCELLED}
)


class ChunkStatus(str, enum.Enum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    SPLIT = "split"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ContactStatus(str, enum.Enum):
    PENDING = "pending"
    QUEUED = "queued"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    RECENTLY_CONTACTED = "recently_contacted"
    OUT_OF_WINDOW = "out_of_window"


class Outcome(str, enum.Enum):
    """How one HTTP attempt ended (the client issue's table)."""

    SENDING = "sending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    AUTH = "auth"
    CAMPAIGN_INVALID = "campaign_invalid"
    CLIENT_BUG = "client_bug"
    RETRYABLE = "retryable"
    UNKNOWN = "unknown"
    # Not an HTTP attempt: a call result arrived on an unknown chunk's result_url, which
    # proves Plum queued it (the row's started_at is when the callback came).
    RECONCILED = "reconciled"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    survey_id: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[str] = mapped_column(String(64))
    contacts_path: Mapped[str] = mapped_column(Text)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime())
    end_at: Mapped[datetime] = mapped_column(UTCDateTime())
    max_attempts: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    reattempt_wait: Mapped[int | None] = mapped_column(Integer)
    result_url: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32), default="scheduled", server_default=text("'scheduled'"))
    last_error: Mapped[str | None] = mapped_column(Text)
    chunk_size: Mapped[int | None] = mapped_column(Integer)
    # Local calling hours ("08:00", "21:00") overriding config contacts.calling_window,
    # and weekdays nobody is called ("sat,sun"); see scheduler/windows.py.
    calling_window_start: Mapped[str | None] = mapped_column(String(8))
    calling_window_end: Mapped[str | None] = mapped_column(String(8))
    excluded_weekdays: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now, server_default=NOW_DEFAULT)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now, onupdate=_now,
                                                 server_default=NOW_DEFAULT)
    # The status the daemon last saw (daemon-owned): a change it did not make itself
    # (an admin's CLI command or SQL edit) is logged once, by one daemon.
    status_seen: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ingested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    contacts_header: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    contacts_total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    contacts_valid: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    contacts_invalid: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    contacts_duplicate: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    contacts_queued: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_pending: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_succeeded: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_failed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_rejected: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_unknown: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_expired: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_cancelled: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    __table_args__ = (Index(None, "status", "start_at"), {"sqlite_autoincrement": True})


class Chunk(Base):
    __tablename__ = "chunks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("chunks.id"))
    status: Mapped[str] = mapped_column(String(32), default="pending", server_default=text("'pending'"))
    contact_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Bumped by every claim: what a daemon writes under a claim must carry the current one.
    claim_token: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Attempts that failed while Plum was down for everyone (the breaker open): not counted
    # against max_tries.
    outage_tries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now, onupdate=_now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # With calling windows on: the time zones its contacts may be in (space-separated),
    # and the window it is sent for (its start_timestamp / end_timestamp). NULL: no windows.
    timezones: Mapped[str | None] = mapped_column(Text)
    window_start_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_end_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("campaign_id", "seq"),
        Index(None, "status", "campaign_id", "next_attempt_at"),
        # A claim walks one campaign's pending chunks in file order and stops at the first
        # ready ones; without it every claim sorted all of them.
        Index(None, "campaign_id", "status", "seq"),
    )


class Contact(Base):
    """One row per input CSV row. No foreign keys on purpose: their per-row checks
    doubled the cost of writing a million contacts; only ingestion writes here."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(Integer)
    row_number: Mapped[int] = mapped_column(Integer)
    raw_phone: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(32))
    extra: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    chunk_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("campaign_id", "row_number"),
        Index(None, "chunk_id"),
    )


class Submission(Base):
    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32), default="sending")
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    latency_seconds: Mapped[float | None] = mapped_column(Float)
    contact_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    __table_args__ = (Index(None, "chunk_id"), Index(None, "campaign_id", "outcome"))



class CallResult(Base):
    """One call_details body Plum POSTed to a result_url (raw body kept)."""

    __tablename__ = "call_results"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(Integer)
    chunk_id: Mapped[int | None] = mapped_column(Integer)
    contact_id: Mapped[int | None] = mapped_column(BigId)
    phone: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int | None] = mapped_column(Integer)
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    queued_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    last_attempt_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    body: Mapped[str] = mapped_column(Text)
    body_sha256: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("campaign_id", "chunk_id", "body_sha256"),
        Index(None, "contact_id"),
    )


class Worker(Base):
    """One row per daemon: its heartbeat, for `insight-scheduler check` and /readyz."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    last_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Who runs under this id: a second process may not take a live daemon's id.
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String(32))
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # a clean stop
    # Which process ids ``pid`` belongs to (boot id and pid namespace): another daemon in the
    # same space sees at once that the process is gone (kill -9), without waiting 3 polls.
    process_space: Mapped[str | None] = mapped_column(String(128))


class CampaignFile(Base):
    """A campaign's contacts file, stored by `campaign create --contacts` (zlib-compressed),
    so that a daemon on any host can ingest it. Rows inserted by SQL have none: the daemon
    then reads ``campaigns.contacts_path``."""

    __tablename__ = "campaign_files"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    file_name: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    compression: Mapped[str] = mapped_column(String(16), default="zlib", server_default=text("'zlib'"))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)


class ChunkBody(Base):
    """A chunk's request CSV, built at ingestion (chunking.BodyBuilder): a claim sends it as it is
    while it still holds exactly the chunk's contacts to send (``contacts`` = the chunk's
    ``contact_count``) in the configured ``format``; otherwise the CSV is built from the contacts
    (a suppression took some out, the config changed, a chunk split). Internal: admins never
    edit it; it goes with its chunk, and is dropped once the chunk succeeded."""

    __tablename__ = "chunk_bodies"

    chunk_id: Mapped[int] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(Integer)  # checked too: a body is never another campaign's
    contacts: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(Text)
    body: Mapped[bytes] = mapped_column(LargeBinary)


class PlumAccount(Base):
    """One row per Plum account (base URL + user): the circuit breaker as admins see it."""

    __tablename__ = "plum_accounts"

    account: Mapped[str] = mapped_column(String(512), primary_key=True)
    breaker: Mapped[str] = mapped_column(String(16), default="closed", server_default=text("'closed'"))
    open_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    probes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    hold_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outages: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # The account's rate limit, shared by every daemon: the next free send slot (GCRA's
    # theoretical arrival time) in Unix seconds of the database's clock.
    rate_next_slot: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    updated_by: Mapped[str | None] = mapped_column(String(128))


class Suppression(Base):
    """A number that must never be called (do-not-call), checked at ingestion and before each send."""

    __tablename__ = "suppressions"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)  # E.164
    reason: Mapped[str | None] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now, server_default=NOW_DEFAULT)
    source: Mapped[str | None] = mapped_column(String(200))


class RecentCall(Base):
    """When each number was last queued with Plum, and by which campaign (frequency caps)."""

    __tablename__ = "recent_calls"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)  # E.164
    campaign_id: Mapped[int] = mapped_column(Integer)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CampaignDeletion(Base):
    """A campaign row an admin deleted (written by a trigger), until a daemon has logged it.

    A campaign with submissions cannot be deleted (its ledger would go with it);
    one without loses its chunks and contacts with it, and this row says how many.
    """

    __tablename__ = "campaign_deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str | None] = mapped_column(String(32))
    chunks_unsent: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    contacts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now, server_default=NOW_DEFAULT)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# -- the web console (issue 16) ---------------------------------------------------------

CONSOLE_ROLES = ("admin", "viewer")

# Read by the console's campaigns page every few seconds: requests in the last minute (all
# campaigns) without scanning every submission ever made.
Index("ix_submissions_started_at", Submission.started_at)
# ... and a campaign's latest call results, newest first, without reading its older ones.
Index("ix_call_results_campaign_id_id", CallResult.campaign_id, CallResult.id)


class CallResultCount(Base):
    """Call results per campaign and status, kept by database triggers on ``call_results``
    (migration 0009): the console's campaign page reads these few rows instead of counting a
    million call results every few seconds. ``status`` '' stands for none."""

    __tablename__ = "call_result_counts"

    campaign_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    results: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class ConsoleUser(Base):
    """Someone who may sign in to the console: an admin steers, a viewer only looks."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)  # argon2id, never shown
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    __table_args__ = (CheckConstraint("role IN ('admin', 'viewer')", name="role"),)


class ConsoleSession(Base):
    """A signed-in browser. Only the SHA-256 of its cookie is stored, so a copy of the table
    signs nobody in; every daemon behind a load balancer reads the same rows."""

    __tablename__ = "console_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("console_users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "user_id"), Index(None, "expires_at"))


class ConsoleLoginAttempt(Base):
    """A sign-in attempt that did not succeed (or is being checked): the per-user throttle,
    shared by every daemon."""

    __tablename__ = "console_login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "username", "attempted_at"),)
