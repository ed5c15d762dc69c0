"""Once per campaign, before the first submission: check the row, read the file,
write every contact and every chunk. Nothing is sent until this has finished
(``campaigns.ingested_at`` is set in the last transaction).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import Settings
from .contacts import ContactsFileError, ParsedContact, iter_contacts
from .models import Campaign
from .repository import Repository
from .rules import WaitBounds, campaign_problems

log = logging.getLogger("scheduler.ingest")

BATCH_ROWS = 5000


@dataclass
class ChunkAssigner:
    """Valid contacts, in file order, fill chunks of ``chunk_size``."""

    chunk_size: int
    valid: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "valid": 0, "invalid": 0, "duplicate": 0})

    def assign(self, batch: list[ParsedContact]) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
        """New chunks (seq, 0) opened by this batch, and the contact rows to insert."""
        new_chunks: list[tuple[int, int]] = []
        rows: list[dict[str, Any]] = []
        for contact in batch:
            self.counts["total"] += 1
            seq = None
            if contact.status == "pending":
                seq, position = divmod(self.valid, self.chunk_size)
                if position == 0:
                    new_chunks.append((seq, 0))
                self.valid += 1
                self.counts["valid"] += 1
            else:
                self.counts[contact.status] += 1
            rows.append(
                dict(row_number=contact.row_number, raw_phone=contact.raw_phone, phone=contact.phone,
                     extra=json.dumps(contact.extra, ensure_ascii=False), status=contact.status,
                     reason=contact.reason, chunk_seq=seq)
            )
        return new_chunks, rows


def row_problems(campaign: Campaign, settings: Settings) -> list[str]:
    bounds = WaitBounds(settings.insight.reattempt_wait_min_seconds, settings.insight.reattempt_wait_max_seconds)
    return campaign_problems(
        survey_id=campaign.survey_id, instance_id=campaign.instance_id, start_at=campaign.start_at,
        end_at=campaign.end_at, max_attempts=campaign.max_attempts, reattempt_wait=campaign.reattempt_wait,
        chunk_size=campaign.chunk_size, bounds=bounds,
    )


def _take(rows: Iterator[ParsedContact], count: int) -> list[ParsedContact]:
    return list(itertools.islice(rows, count))


async def ingest_campaign(
    repo: Repository, campaign: Campaign, settings: Settings, worker: str, clock: Callable[[], datetime]
) -> bool:
    """True when the campaign is ready to send; False when it was failed (last_error says why)."""
    problems = row_problems(campaign, settings)
    if problems:
        await repo.fail_campaign(campaign.id, "invalid campaign row: " + "; ".join(problems), clock())
        log.warning("campaign %s failed validation: %s", campaign.id, "; ".join(problems))
        return False
    await repo.clear_ingestion(campaign.id)
    try:
        header, counts = await _stream_into_database(repo, campaign, settings, worker, clock)
    except ContactsFileError as exc:
        await repo.clear_ingestion(campaign.id)
        await repo.fail_campaign(campaign.id, str(exc), clock())
        log.warning("campaign %s failed: %s", campaign.id, exc)
        return False
    await repo.finish_ingestion(campaign.id, header, counts, clock())
    log.info("campaign %s ingested: %s", campaign.id, counts)
    return True


async def _stream_into_database(
    repo: Repository, campaign: Campaign, settings: Settings, worker: str, clock: Callable[[], datetime]
) -> tuple[str, dict[str, int]]:
    contacts = settings.contacts
    # Reading and parsing run in a worker thread, so the event loop (and every
    # other campaign's submissions) keeps going while a large file is read.
    header, rows = await asyncio.to_thread(
        iter_contacts, Path(campaign.contacts_path), contacts.phone_columns, contacts.default_region
    )
    assigner = ChunkAssigner(campaign.chunk_size or settings.submission.chunk_size)
    lease = timedelta(seconds=settings.scheduler.lease_seconds)
    while batch := await asyncio.to_thread(_take, rows, BATCH_ROWS):
        chunks, contact_rows = assigner.assign(batch)
        await repo.add_ingested_batch(campaign.id, chunks, contact_rows)
        await repo.extend_campaign_lease(campaign.id, worker, clock() + lease)
    if assigner.counts["total"] == 0:
        raise ContactsFileError(
            f"contacts file {campaign.contacts_path} has a header row ({', '.join(header.extra_names + (header.phone_name,))}) but no contacts"
        )
    header_json = json.dumps({"phone": header.phone_name, "extra": list(header.extra_names)}, ensure_ascii=False)
    return header_json, assigner.counts
