"""Once per campaign, before the first submission: check the row, read the file,
write every contact and every chunk. Nothing is sent until this has finished
(``campaigns.ingested_at`` is set in the last transaction).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import multiprocessing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from .config import Settings
from .contacts import ContactsFileError, ContactsHeader, ParsedContact, iter_contacts, pack_extra
from .repository import ContactTuple
from .models import Campaign
from .repository import Repository
from .rules import WaitBounds, campaign_problems

log = logging.getLogger("scheduler.ingest")

BATCH_ROWS = 5000
PROCESS_THRESHOLD_BYTES = 4 * 1024 * 1024  # ~60k contacts
T = TypeVar("T")


@dataclass
class ChunkAssigner:
    """Valid contacts, in file order, fill chunks of ``chunk_size``."""

    chunk_size: int
    valid: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "pending": 0, "invalid": 0, "duplicate": 0})

    def assign(self, batch: list[ParsedContact]) -> tuple[list[int], list[ContactTuple]]:
        """Sequence numbers of the chunks this batch opens, and the contact rows to insert."""
        new_chunks: list[int] = []
        rows: list[ContactTuple] = []
        counts = self.counts
        for contact in batch:
            seq = None
            if contact.status == "pending":
                seq, position = divmod(self.valid, self.chunk_size)
                if position == 0:
                    new_chunks.append(seq)
                self.valid += 1
            counts[contact.status] += 1
            rows.append((contact.row_number, contact.raw_phone, contact.phone,
                         pack_extra(contact.extra), contact.status, contact.reason, seq))
        counts["total"] += len(batch)
        return new_chunks, rows


def recent_since(settings: Settings, now: datetime) -> datetime | None:
    """Numbers queued by another campaign after this moment are not called again (None: cap off)."""
    hours = settings.contacts.min_hours_between_calls
    return now - timedelta(hours=hours) if hours > 0 else None


def row_problems(campaign: Campaign, settings: Settings) -> list[str]:
    bounds = WaitBounds(settings.insight.reattempt_wait_min_seconds, settings.insight.reattempt_wait_max_seconds)
    return campaign_problems(
        survey_id=campaign.survey_id, instance_id=campaign.instance_id, start_at=campaign.start_at,
        end_at=campaign.end_at, max_attempts=campaign.max_attempts, reattempt_wait=campaign.reattempt_wait,
        chunk_size=campaign.chunk_size, bounds=bounds,
    )


def _next_batch(rows: Iterator[ParsedContact], assigner: ChunkAssigner) -> tuple[list[int], list[ContactTuple]]:
    """Read, parse and assign one batch."""
    return assigner.assign(list(itertools.islice(rows, BATCH_ROWS)))


# -- where the file is parsed ------------------------------------------------------
# Parsing is CPU-bound Python. A large file is parsed in a child process, so it
# runs on the other core while this process writes the previous batch, and the
# event loop never competes with it for the GIL. A small file is parsed in a
# thread: starting a process would cost more than it saves.

_process_state: dict[str, object] = {}  # a worker process serves one ingestion only


def _child_open(state: dict | None, path: str, candidates: list[str], region: str, chunk_size: int) -> ContactsHeader:
    header, rows = iter_contacts(Path(path), candidates, region)
    (_process_state if state is None else state).update(rows=rows, assigner=ChunkAssigner(chunk_size))
    return header


def _child_next(state: dict | None) -> tuple[list[int], list[ContactTuple]]:
    state = _process_state if state is None else state
    return _next_batch(state["rows"], state["assigner"])  # type: ignore[arg-type]


def _child_counts(state: dict | None) -> dict[str, int]:
    state = _process_state if state is None else state
    return dict(state["assigner"].counts)  # type: ignore[attr-defined]


class _Reader:
    """Runs the _child_* functions in a worker process or, for small files, a thread.

    A thread shares this process, so its parser state is the reader's own
    (several campaigns may be ingested at once); a process has its own.
    """

    def __init__(self, path: Path) -> None:
        self._pool: concurrent.futures.Executor
        try:
            large = path.stat().st_size >= PROCESS_THRESHOLD_BYTES
        except OSError:
            large = False  # iter_contacts reports the problem
        if large:
            context = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
            self._state: dict | None = None
        else:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
            self._state = {}

    async def call(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, self._state, *args)

    def close(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


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
    now = clock()
    await repo.finish_ingestion(campaign.id, header, counts, now, recent_since(settings, now))
    log.info("campaign %s ingested: %s", campaign.id, counts)
    return True


async def _stream_into_database(
    repo: Repository, campaign: Campaign, settings: Settings, worker: str, clock: Callable[[], datetime]
) -> tuple[str, dict[str, int]]:
    contacts = settings.contacts
    chunk_size = campaign.chunk_size or settings.submission.chunk_size
    lease = timedelta(seconds=settings.scheduler.lease_seconds)
    reader = _Reader(Path(campaign.contacts_path))
    try:
        header = await reader.call(_child_open, campaign.contacts_path, list(contacts.phone_columns),
                                   contacts.default_region, chunk_size)
        upcoming = asyncio.ensure_future(reader.call(_child_next))
        while True:
            chunks, contact_rows = await upcoming
            if not contact_rows:
                break
            upcoming = asyncio.ensure_future(reader.call(_child_next))  # parse the next batch meanwhile
            await repo.add_ingested_batch(campaign.id, chunks, contact_rows)
            await repo.extend_campaign_lease(campaign.id, worker, clock() + lease)
        counts = await reader.call(_child_counts)
    except BaseException:
        reader.close(wait=False)
        raise
    await asyncio.to_thread(reader.close, True)  # reap the worker process
    if counts["total"] == 0:
        names = ", ".join((header.phone_name, *header.extra_names))
        raise ContactsFileError(f"contacts file {campaign.contacts_path} has a header row ({names}) but no contacts")
    header_json = json.dumps({"phone": header.phone_name, "extra": list(header.extra_names)}, ensure_ascii=False)
    counts["valid"] = counts.pop("pending")
    return header_json, counts
