"""Every query the program makes. Nothing outside this module touches a session.

Methods return detached ORM rows (plain values once returned) or small
dataclasses; callers never see a session or a connection.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .db import READ_ONLY, describe_connect_error
from .errors import DatabaseError, NotFound, UserError
from .models import (
    FINAL_CAMPAIGN_STATUSES,
    Campaign,
    CampaignStatus,
    Chunk,
    ChunkStatus,
    Contact,
    Submission,
)


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
    status: str = CampaignStatus.SCHEDULED.value


@dataclass
class CampaignReport:
    campaign: Campaign
    chunks_by_status: dict[str, int] = field(default_factory=dict)
    contacts_by_status: dict[str, int] = field(default_factory=dict)
    submissions_by_code: dict[str, int] = field(default_factory=dict)
    submissions_by_outcome: dict[str, int] = field(default_factory=dict)
    unknown_chunks: list[Chunk] = field(default_factory=list)


# Which statuses an admin command may move a campaign from.
PAUSABLE = {CampaignStatus.SCHEDULED.value, CampaignStatus.RUNNING.value}
RESUMABLE = {CampaignStatus.PAUSED.value, CampaignStatus.DRAFT.value}
FINAL = {s.value for s in FINAL_CAMPAIGN_STATUSES}


class Repository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction (BEGIN IMMEDIATE on SQLite)."""
        async with self._translate(), self._sessions() as session, session.begin():
            yield session

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

    # -- campaigns: admin commands -------------------------------------------------

    async def create_campaign(self, new: NewCampaign) -> Campaign:
        async with self._write() as session:
            row = Campaign(**new.__dict__)
            session.add(row)
        return row

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
                await self._cancel_open_chunks(session, campaign_id)
        return row

    async def _cancel_open_chunks(self, session: AsyncSession, campaign_id: int) -> None:
        await session.execute(
            update(Chunk)
            .where(Chunk.campaign_id == campaign_id, Chunk.status == ChunkStatus.PENDING.value)
            .values(status=ChunkStatus.CANCELLED.value, finished_at=utcnow(), updated_at=utcnow())
        )

    async def campaign_report(self, campaign_id: int) -> CampaignReport:
        campaign = await self.get_campaign(campaign_id)
        report = CampaignReport(campaign=campaign)
        async with self._read() as session:
            report.chunks_by_status = await _count_by(session, Chunk.status, Chunk.campaign_id == campaign_id)
            report.contacts_by_status = await _count_by(session, Contact.status, Contact.campaign_id == campaign_id)
            by_code = await _count_by(session, Submission.status_code, Submission.campaign_id == campaign_id)
            report.submissions_by_code = {("none" if k is None else str(k)): v for k, v in by_code.items()}
            report.submissions_by_outcome = await _count_by(
                session, Submission.outcome, Submission.campaign_id == campaign_id
            )
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


async def _count_by(session: AsyncSession, column: Any, *where: Any) -> dict[Any, int]:
    rows = await session.execute(select(column, func.count()).where(*where).group_by(column))
    return {key: count for key, count in rows.all()}


def _is_connect_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(word in text for word in ("connect", "unable to open database", "does not exist"))
