"""The console's queries, mixed into Repository: users, sessions, the sign-in throttle and the
aggregates its pages read every few seconds (from counters and indexes, never a scan of a
campaign's contacts)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, NamedTuple, Sequence

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import NotFound, UserError
from ..models import (
    CallResult,
    Campaign,
    Chunk,
    ChunkStatus,
    ConsoleLoginAttempt,
    ConsoleSession,
    ConsoleUser,
    Contact,
    Submission,
    Suppression,
    parse_db_time,
)

# Sign-in attempts are kept this long (the throttle looks at the last minute only).
ATTEMPT_MEMORY = timedelta(hours=1)


class LoginTicket(NamedTuple):
    """An attempt that may go ahead (its row counts as a failure until it succeeds), or the
    seconds to wait when the user's recent failures reached the limit."""

    attempt_id: int | None
    retry_after_seconds: int = 0


@dataclass
class Overview:
    """What the campaigns page shows, read in one transaction."""

    campaigns: Sequence[Campaign]
    requests_last_minute: dict[int, int] = field(default_factory=dict)
    account_last_minute: int = 0
    next_window: dict[int, datetime] = field(default_factory=dict)


class ConsoleQueries:
    """Mixed into Repository (see repository._Store for the transactions)."""

    _read: Callable[[], AbstractAsyncContextManager[AsyncSession]]
    _write: Callable[[], AbstractAsyncContextManager[AsyncSession]]

    # -- users --------------------------------------------------------------------------

    async def add_user(self, name: str, role: str, password_hash: str, now: datetime) -> ConsoleUser:
        try:
            async with self._write() as session:
                if await session.scalar(select(ConsoleUser.id).where(ConsoleUser.name == name)) is not None:
                    raise UserError(f"user {name!r} exists; `user passwd {name}` changes the password")
                row = ConsoleUser(name=name, role=role, password_hash=password_hash, created_at=now,
                                  password_changed_at=now)
                session.add(row)
        except IntegrityError:  # added by another admin at the same moment
            raise UserError(f"user {name!r} exists; `user passwd {name}` changes the password") from None
        return row

    async def list_users(self) -> Sequence[ConsoleUser]:
        async with self._read() as session:
            return (await session.scalars(select(ConsoleUser).order_by(ConsoleUser.name))).all()

    async def user_by_name(self, name: str) -> ConsoleUser | None:
        async with self._read() as session:
            return await session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))

    async def remove_user(self, name: str) -> None:
        """The user and every session of theirs (signed out at their next request)."""
        async with self._write() as session:
            row = await session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))
            if row is None:
                raise NotFound(f"no user named {name!r}; `user list` shows every user")
            await session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == row.id))
            await session.delete(row)

    async def set_password(self, name: str, password_hash: str, now: datetime) -> None:
        """A new password signs the user out everywhere."""
        async with self._write() as session:
            row = await session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))
            if row is None:
                raise NotFound(f"no user named {name!r}; `user list` shows every user")
            row.password_hash, row.password_changed_at = password_hash, now
            await session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == row.id))

    # -- sessions -----------------------------------------------------------------------

    async def create_session(self, user_id: int, token_sha256: str, csrf_token: str, now: datetime,
                             expires_at: datetime) -> None:
        async with self._write() as session:
            await session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
            session.add(ConsoleSession(token_sha256=token_sha256, user_id=user_id, csrf_token=csrf_token,
                                       created_at=now, expires_at=expires_at))

    async def session_user(self, token_sha256: str, now: datetime) -> tuple[ConsoleSession, ConsoleUser] | None:
        """The live session with this token hash and its user, or None."""
        async with self._read() as session:
            found = (await session.execute(
                select(ConsoleSession, ConsoleUser).join(ConsoleUser, ConsoleUser.id == ConsoleSession.user_id)
                .where(ConsoleSession.token_sha256 == token_sha256, ConsoleSession.expires_at > now))).first()
        return None if found is None else (found[0], found[1])

    async def end_session(self, token_sha256: str) -> None:
        async with self._write() as session:
            await session.execute(delete(ConsoleSession).where(ConsoleSession.token_sha256 == token_sha256))

    # -- the sign-in throttle -------------------------------------------------------------

    async def begin_login_attempt(self, username: str, now: datetime, window: timedelta, limit: int) -> LoginTicket:
        """Count the user's attempts within ``window``; under ``limit``, record this one (a
        failure until ``login_succeeded``) so that attempts racing on several daemons count too."""
        async with self._write() as session:
            if session.get_bind().dialect.name == "postgresql":
                # SQLite's BEGIN IMMEDIATE already serialises writers; PostgreSQL needs a lock per user.
                await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": username})
            await session.execute(delete(ConsoleLoginAttempt).where(ConsoleLoginAttempt.attempted_at < now - ATTEMPT_MEMORY))
            recent = (await session.scalars(
                select(ConsoleLoginAttempt.attempted_at).where(ConsoleLoginAttempt.username == username,
                                                               ConsoleLoginAttempt.attempted_at > now - window)
                .order_by(ConsoleLoginAttempt.attempted_at))).all()
            if len(recent) >= limit:
                wait = (recent[len(recent) - limit] + window - now).total_seconds()
                return LoginTicket(None, max(1, int(wait) + 1))
            row = ConsoleLoginAttempt(username=username, attempted_at=now)
            session.add(row)
            await session.flush()
            return LoginTicket(row.id)

    async def login_succeeded(self, attempt_id: int) -> None:
        async with self._write() as session:
            await session.execute(delete(ConsoleLoginAttempt).where(ConsoleLoginAttempt.id == attempt_id))

    # -- what the pages read ----------------------------------------------------------------

    async def console_overview(self, now: datetime) -> Overview:
        """Every campaign with its counters, the requests of the last minute (per campaign and
        for the account) and the next calling window still to open."""
        minute_ago = now - timedelta(minutes=1)
        async with self._read() as session:
            campaigns = (await session.scalars(select(Campaign).order_by(Campaign.id.desc()))).all()
            recent = dict((await session.execute(
                select(Submission.campaign_id, func.count())
                .where(Submission.started_at >= minute_ago, Submission.outcome != "reconciled")
                .group_by(Submission.campaign_id))).all())
            windows = dict((await session.execute(
                select(Chunk.campaign_id, func.min(Chunk.window_start_at))
                .where(Chunk.status == ChunkStatus.PENDING.value, Chunk.window_start_at > now)
                .group_by(Chunk.campaign_id))).all())
        return Overview(campaigns, {int(k): int(v) for k, v in recent.items()}, sum(int(v) for v in recent.values()),
                        {int(k): v for k, v in windows.items() if v is not None})

    async def requests_by_second(self, campaign_id: int) -> list[tuple[datetime, int]]:
        """The campaign's HTTP requests counted per second they started, oldest first."""
        async with self._read() as session:
            second: Any
            if session.get_bind().dialect.name == "postgresql":
                second = func.date_trunc("second", Submission.started_at)
            else:  # canonical UTC text: 'YYYY-MM-DD HH:MM:SS' is its first 19 characters
                second = func.substr(Submission.started_at, 1, 19)
            found = (await session.execute(
                select(second, func.count()).where(Submission.campaign_id == campaign_id,
                                                   Submission.outcome != "reconciled")
                .group_by(second).order_by(second))).all()
        return [(_instant(moment), int(count)) for moment, count in found]

    async def contacts_by_status(self, campaign_id: int) -> dict[str, int]:
        """Exact, from the contact rows (reads all of them: shown only when asked for)."""
        async with self._read() as session:
            if await session.get(Campaign, campaign_id) is None:
                raise NotFound(f"no campaign with id {campaign_id}")
            found = await session.execute(select(Contact.status, func.count())
                                          .where(Contact.campaign_id == campaign_id).group_by(Contact.status))
            return {str(status): int(count) for status, count in found.all()}

    async def search_suppressions(self, needle: str, limit: int) -> tuple[Sequence[Suppression], int]:
        """Numbers containing ``needle`` (digits compared, newest first), at most ``limit``, and how many match."""
        where = Suppression.number.contains(needle, autoescape=True) if needle else Suppression.number.is_not(None)
        async with self._read() as session:
            total = int(await session.scalar(select(func.count()).select_from(Suppression).where(where)) or 0)
            rows = (await session.scalars(select(Suppression).where(where)
                                          .order_by(Suppression.added_at.desc(), Suppression.number).limit(limit))).all()
        return rows, total


def _instant(value: Any) -> datetime:
    return parse_db_time(value) if isinstance(value, str) else value


class CallResultLine(NamedTuple):
    received_at: datetime
    phone: str | None
    status: str | None
    attempts: int | None
    duration_seconds: int | None


class PageQueries:
    """Mixed into Repository with ConsoleQueries: what the campaign page reads beside the report."""

    _read: Callable[[], AbstractAsyncContextManager[AsyncSession]]

    async def latest_call_results(self, campaign_id: int, limit: int) -> list[CallResultLine]:
        async with self._read() as session:
            found = (await session.execute(
                select(CallResult.received_at, CallResult.phone, CallResult.status, CallResult.attempts,
                       CallResult.duration_seconds)
                .where(CallResult.campaign_id == campaign_id).order_by(CallResult.id.desc()).limit(limit))).all()
        return [CallResultLine._make(row) for row in found]

    async def chunk_contacts_by_status(self, campaign_id: int) -> dict[str, int]:
        """Contacts waiting in, or sent with, the campaign's chunks, by chunk status (split
        chunks left out: their contacts are in their halves)."""
        async with self._read() as session:
            found = (await session.execute(
                select(Chunk.status, func.coalesce(func.sum(Chunk.contact_count), 0))
                .where(Chunk.campaign_id == campaign_id, Chunk.status != ChunkStatus.SPLIT.value)
                .group_by(Chunk.status))).all()
        return {str(status): int(contacts) for status, contacts in found}

    async def unknown_chunk_page(self, campaign_id: int, limit: int) -> tuple[list[Chunk], int]:
        """The first ``limit`` unknown chunks and how many there are."""
        where = (Chunk.campaign_id == campaign_id, Chunk.status == ChunkStatus.UNKNOWN.value)
        async with self._read() as session:
            total = int(await session.scalar(select(func.count()).select_from(Chunk).where(*where)) or 0)
            rows = (await session.scalars(select(Chunk).where(*where).order_by(Chunk.seq).limit(limit))).all()
        return list(rows), total
