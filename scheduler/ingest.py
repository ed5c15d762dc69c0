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
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

from .config import Settings
from .errors import LedgerKept
from .contacts import ContactsFileError, ContactsHeader, ParsedContact, iter_contacts, pack_extra
from .chunking import BodyBuilder, body_format
from .repository import ChunkBodyTuple, ContactTuple, NewChunk
from . import stored_files, windows
from .models import Campaign
from .phones import Normaliser, ZoneLookup
from .repository import Repository
from .rules import WaitBounds, campaign_problems

log = logging.getLogger("scheduler.ingest")

BATCH_ROWS = 5000
PROCESS_THRESHOLD_BYTES = 4 * 1024 * 1024  # ~60k contacts
T = TypeVar("T")


@dataclass(frozen=True)
class WindowPlan:
    """What ingestion needs to give each contact its time zones and each chunk its window."""

    rule: windows.CallingRule
    campaign_zone: str | None  # timezone_policy campaign: everyone's zone
    not_before: datetime
    start_at: datetime
    end_at: datetime


def rule_of(row: Any, settings: Settings) -> windows.CallingRule | None:
    """A campaign's calling rule: its window columns (on ``row``), else the config; None when off."""
    contacts = settings.contacts
    return windows.campaign_rule(row.calling_window_start, row.calling_window_end, row.excluded_weekdays,
                                 contacts.calling_window, contacts.top_of_hour_offset_minutes)


def window_plan(campaign: Campaign, settings: Settings, now: datetime) -> WindowPlan | None:
    """None when no calling window applies to this campaign (the default)."""
    contacts = settings.contacts
    rule = rule_of(campaign, settings)
    if rule is None:
        return None
    zone = contacts.campaign_timezone if contacts.timezone_policy == "campaign" else None
    return WindowPlan(rule, zone, now, campaign.start_at, campaign.end_at)


@dataclass
class ChunkAssigner:
    """Valid contacts, in file order, fill chunks of ``chunk_size``.

    With calling windows, each set of time zones fills its own chunks, and a
    contact whose zones share no window before end_at is ``out_of_window``.
    """

    chunk_size: int
    plan: WindowPlan | None = None
    valid: int = 0
    chunks_opened: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("total", "pending", "invalid", "duplicate", "out_of_window"), 0))
    zones: ZoneLookup = field(default_factory=ZoneLookup)
    # per zone set: [seq of its open chunk (-1: none yet), contacts in it, window, out_of_window reason, zones]
    _groups: dict[tuple[str, ...], list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        plan = self.plan
        self._campaign_zones = (plan.campaign_zone,) if plan and plan.campaign_zone else None

    def assign(self, batch: list[ParsedContact]) -> tuple[list[NewChunk], list[ContactTuple]]:
        """The chunks this batch opens, and the contact rows to insert."""
        new_chunks: list[NewChunk] = []
        rows: list[ContactTuple] = []
        counts = self.counts
        place = self._in_file_order if self.plan is None else self._by_zone
        for contact in batch:
            seq, status, reason = None, contact.status, contact.reason
            if status == "pending":
                seq, status, reason = place(contact, new_chunks)
            counts[status] += 1
            rows.append((contact.row_number, contact.raw_phone, contact.phone,
                         pack_extra(contact.extra), status, reason, seq))
        counts["total"] += len(batch)
        return new_chunks, rows

    def _in_file_order(self, contact: ParsedContact, new_chunks: list[NewChunk]) -> tuple[int, str, None]:
        seq, position = divmod(self.valid, self.chunk_size)
        if position == 0:
            new_chunks.append((seq, None, None, None))
        self.valid += 1
        return seq, "pending", None

    def _by_zone(self, contact: ParsedContact, new_chunks: list[NewChunk]) -> tuple[int | None, str, str | None]:
        # This runs for each contact in the parser, a million-row ingestion's bottleneck: the
        # zones are most often those the normaliser's prefix already holds (no table lookup).
        prefix = contact.prefix
        zones = self._campaign_zones or (prefix.zones if prefix is not None else None)
        if zones is None:
            zones = self.zones.of_prefix(contact.phone, prefix)  # type: ignore[arg-type]
        group = self._groups.get(zones) or self._new_group(zones)
        if group[2] is None:
            return None, "out_of_window", group[3]
        if group[0] < 0 or group[1] == self.chunk_size:
            group[0], group[1] = self.chunks_opened, 0
            new_chunks.append((self.chunks_opened, group[4], *group[2]))
            self.chunks_opened += 1
        group[1] += 1
        return group[0], "pending", None

    def _new_group(self, zones: tuple[str, ...]) -> list[Any]:
        plan = self.plan
        assert plan is not None
        window = windows.next_window(zones, plan.rule, plan.not_before, plan.start_at, plan.end_at)
        reason = None if window else out_of_window_reason(zones, plan.rule)
        group = self._groups[zones] = [-1, 0, window, reason, " ".join(zones)]
        return group


def replan_window(chunk: Any, settings: Settings, now: datetime) -> windows.Interval | None:
    """A not yet sent chunk's window now (``Repository.unsent_windows`` row), from the
    campaign's columns and the current config, so an admin's edit applies to it.

    Raises ValueError when an admin has written something invalid in those columns.
    """
    rule = rule_of(chunk, settings)
    if rule is None:  # windows were switched off since ingestion: any time before end_at
        return (now, chunk.end_at) if chunk.end_at - now >= windows.MIN_WINDOW else None
    zones = tuple(chunk.timezones.split()) if chunk.timezones else ()
    return windows.next_window(zones, rule, now, chunk.start_at, chunk.end_at)


def out_of_window_reason(zones: tuple[str, ...], rule: windows.CallingRule) -> str:
    if not zones:
        return "no time zone is known for this number, so its calling hours cannot be checked"
    where = zones[0] if len(zones) == 1 else f"all of its {len(zones)} possible time zones"
    return f"no calling window ({rule.describe()}) open in {where} before end_at"


def recent_since(settings: Settings, now: datetime) -> datetime | None:
    """Numbers queued by another campaign after this moment are not called again (None: cap off)."""
    hours = settings.contacts.min_hours_between_calls
    return now - timedelta(hours=hours) if hours > 0 else None


def row_problems(campaign: Campaign, settings: Settings) -> list[str]:
    bounds = WaitBounds(settings.insight.reattempt_wait_min_seconds, settings.insight.reattempt_wait_max_seconds)
    return campaign_problems(
        survey_id=campaign.survey_id, instance_id=campaign.instance_id, start_at=campaign.start_at,
        end_at=campaign.end_at, max_attempts=campaign.max_attempts, reattempt_wait=campaign.reattempt_wait,
        chunk_size=campaign.chunk_size, bounds=bounds, calling_window_start=campaign.calling_window_start,
        calling_window_end=campaign.calling_window_end, excluded_weekdays=campaign.excluded_weekdays,
    )


def _next_batch(rows: Iterator[ParsedContact], assigner: ChunkAssigner) -> tuple[list[NewChunk], list[ContactTuple]]:
    """Read, parse and assign one batch."""
    return assigner.assign(list(itertools.islice(rows, BATCH_ROWS)))


def filled_bodies(bodies: BodyBuilder, contact_rows: list[ContactTuple]) -> list[ChunkBodyTuple]:
    """The request bodies of the chunks these contacts filled. Built here, not in the parser: the
    parser is ingestion's bottleneck, and this process waits for it."""
    return bodies.add((row[6], row[2] or "", row[3]) for row in contact_rows if row[6] is not None)


# -- where the file is parsed ------------------------------------------------------
# Parsing is CPU-bound Python. A large file is parsed in a child process, so it
# runs on the other core while this process writes the previous batch, and the
# event loop never competes with it for the GIL. A small file is parsed in a
# thread: starting a process would cost more than it saves.

_process_state: dict[str, Any] = {}  # a worker process serves one ingestion only


def _child_open(state: dict[str, Any] | None, path: str, candidates: list[str], region: str, chunk_size: int,
                plan: WindowPlan | None) -> ContactsHeader:
    normaliser = Normaliser(region)  # shared: the time-zone lookup reuses the number types it works out
    header, rows = iter_contacts(Path(path), candidates, region, normaliser,
                                 cwd_name="the daemon's working directory")
    assigner = ChunkAssigner(chunk_size, plan, zones=ZoneLookup(normaliser))
    (_process_state if state is None else state).update(rows=rows, assigner=assigner)
    return header


def _child_next(state: dict[str, Any] | None) -> tuple[list[NewChunk], list[ContactTuple]]:
    state = _process_state if state is None else state
    return _next_batch(state["rows"], state["assigner"])


def _child_counts(state: dict[str, Any] | None) -> dict[str, int]:
    state = _process_state if state is None else state
    counts = dict(state["assigner"].counts)
    # With the header line, these account for every line of the file (multi-line records are refused).
    counts["blank_lines"] = state["rows"].blank_lines
    return counts


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
            self._state: dict[str, Any] | None = None
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
        await repo.fail_campaign(campaign.id, "invalid campaign row: " + "; ".join(problems), clock(), worker)
        log.warning("campaign %s failed validation: %s", campaign.id, "; ".join(problems))
        return False
    try:
        await repo.clear_ingestion(campaign.id, worker)
    except LedgerKept as exc:
        await repo.fail_campaign(campaign.id, str(exc), clock(), worker)
        log.error("campaign %s failed: %s", campaign.id, exc)
        return False
    try:
        async with contacts_source(repo, campaign) as (path, label):
            try:
                header, counts = await _stream_into_database(repo, campaign, settings, worker, clock, path)
            except ContactsFileError as exc:
                raise ContactsFileError(str(exc).replace(str(path), label)) from None
    except ContactsFileError as exc:
        await repo.clear_ingestion(campaign.id, worker)
        await repo.fail_campaign(campaign.id, str(exc), clock(), worker)
        log.warning("campaign %s failed: %s", campaign.id, exc)
        return False
    now = clock()
    await repo.finish_ingestion(campaign.id, worker, header, counts, now, recent_since(settings, now))
    log.info("campaign %s ingested: %s", campaign.id, counts)
    return True


@asynccontextmanager
async def contacts_source(repo: Repository, campaign: Campaign) -> AsyncIterator[tuple[Path, str]]:
    """The file to read and how messages name it: the copy stored in the database (written to a
    temporary file, removed afterwards), else contacts_path as an admin wrote it."""
    stored = await repo.stored_contacts(campaign.id)
    if stored is None:
        yield Path(campaign.contacts_path), campaign.contacts_path
        return
    try:
        path = await asyncio.to_thread(stored_files.unpack, stored.data, stored.sha256)
    except stored_files.CorruptFile as exc:
        raise ContactsFileError(f"contacts file {stored.file_name} (stored in the database): {exc}; "
                                "create the campaign again with campaign create --contacts") from None
    del stored  # the compressed bytes are not needed while the file is read
    try:
        yield path, f"{Path(campaign.contacts_path).name} (stored in the database)"
    finally:
        path.unlink(missing_ok=True)


async def _stream_into_database(
    repo: Repository, campaign: Campaign, settings: Settings, worker: str, clock: Callable[[], datetime],
    path: Path,
) -> tuple[str, dict[str, int]]:
    contacts = settings.contacts
    chunk_size = campaign.chunk_size or settings.submission.chunk_size
    lease = timedelta(seconds=settings.scheduler.lease_seconds)
    reader = _Reader(path)
    body_key = body_format(settings.insight.phone_column, settings.insight.number_format)
    try:
        plan = window_plan(campaign, settings, clock())
        header = await reader.call(_child_open, str(path), list(contacts.phone_columns),
                                   contacts.default_region, chunk_size, plan)
        bodies = BodyBuilder(settings.insight.phone_column, header.extra_names, settings.insight.number_format,
                             chunk_size)
        upcoming = asyncio.ensure_future(reader.call(_child_next))
        filled: list[ChunkBodyTuple] = []
        while True:
            chunks, contact_rows = await upcoming
            if not contact_rows:
                break
            upcoming = asyncio.ensure_future(reader.call(_child_next))  # parse the next batch meanwhile
            # The bodies this batch fills are built (in a thread) while the database writes it
            # (they go with the next batch): the parser keeps one core busy, and the writes run
            # in SQLite's C code most of the time.
            filled, _ = await asyncio.gather(
                asyncio.to_thread(filled_bodies, bodies, contact_rows),
                repo.add_ingested_batch(campaign.id, worker, chunks, contact_rows, filled, body_key))
            await repo.extend_campaign_lease(campaign.id, worker, clock() + lease)
        await repo.add_ingested_batch(campaign.id, worker, [], [], filled + bodies.rest(), body_key)
        counts = await reader.call(_child_counts)
    except BaseException:
        reader.close(wait=False)
        raise
    await asyncio.to_thread(reader.close, True)  # reap the worker process
    if counts["total"] == 0:
        names = ", ".join((header.phone_name, *header.extra_names))
        raise ContactsFileError(f"contacts file {path} has a header row ({names}) but no contacts")
    header_json = json.dumps({"phone": header.phone_name, "extra": list(header.extra_names)}, ensure_ascii=False)
    counts["valid"] = counts.pop("pending") + counts["out_of_window"]
    return header_json, counts
