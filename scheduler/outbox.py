"""Writing Plum's answers to the ledger, through database outages.

An answer is written at once when the database answers. When it does not (or
takes longer than ``JOURNAL_AFTER_SECONDS``), the answer goes to the local
journal first (fsynced), then waits in order behind earlier ones and is written
with backoff as soon as the database is back. While anything waits here the
dispatcher claims nothing: a new claim needs the database anyway, and answers
are written in the order they came.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from . import journal as journal_file
from . import ledger
from .errors import DatabaseError
from .insight import SubmitResult
from .journal import Journal
from .ledger import ClaimedChunk
from .repository import Repository, utcnow
from .retry import NextStep

log = logging.getLogger("scheduler.outbox")

# A write still running after this long goes to the journal too: a kill -9 while the
# database hangs must not lose the answer.
JOURNAL_AFTER_SECONDS = 1.0
FIRST_BACKOFF_SECONDS = 0.1


# PostgreSQL's "try again": deadlock detected, serialization failure, lock not available.
TRANSIENT_SQLSTATES = {"40P01", "40001", "55P03"}


def unreachable(exc: BaseException) -> bool:
    """The database did not answer (down, restarting, locked beyond the busy timeout), or asked
    for the transaction to be tried again (a deadlock): either way the write waits and retries."""
    if isinstance(exc, (DatabaseError, OSError, OperationalError, InterfaceError)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return exc.connection_invalidated or code in TRANSIENT_SQLSTATES


class DatabaseHealth:
    """Says once that the database went away, and once that it is back."""

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self.down_since: datetime | None = None
        self.last_error: str | None = None

    def failed(self, exc: BaseException, doing: str) -> None:
        self.last_error = str(exc)
        if self.down_since is None:
            self.down_since = self.clock()
            log.error("database unreachable (%s): %s; no new requests until it answers; answers from Plum are "
                      "kept in order (and in the journal) and written when it is back", doing, exc)

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("database reachable again after %.1f s of outage; sending resumes",
                        (self.clock() - self.down_since).total_seconds())
            self.down_since = None


@dataclass
class LedgerWrite:
    """One write an answer (or an unsent claim) owes the ledger."""

    kind: str  # "record": Plum's answer; "release": the claim given back unsent
    claim: ClaimedChunk
    now: datetime
    result: SubmitResult | None = None
    plan: NextStep | None = None
    worker: str = ""
    rejection_limit: int = 0
    expired_at: datetime | None = None
    reason: str = ledger.ENDED_REASON  # of an expiry
    database: str = ""  # which database it belongs to (its URL without the password)
    # The frequency cap is on: write the numbers queued to recent_calls (a replayed answer
    # always does: harmless, and the cap may have been on when it was sent).
    remember_calls: bool = True
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> str:
        return journal_file.entry_to_json(self.id, self.kind, self.claim, self.now, self.result, self.plan,
                                          worker=self.worker, database=self.database,
                                          rejection_limit=self.rejection_limit,
                                          expired_at=self.expired_at, reason=self.reason)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "LedgerWrite":
        return cls(kind=entry["kind"], claim=entry["claim"], now=entry["now"], result=entry.get("result"),
                   plan=entry.get("plan"), worker=entry.get("worker", ""),
                   rejection_limit=entry.get("rejection_limit", 0), expired_at=entry.get("expired_at"),
                   reason=entry.get("reason", ledger.ENDED_REASON), id=entry["id"])

    async def apply(self, repo: Repository, then: ledger.NextClaim | None = None) -> Written:
        """The step the ledger applied and, with ``then`` (where the repository can), the chunks
        claimed in the same transaction."""
        if self.kind == "release":
            await repo.release_claim(self.claim, self.expired_at, self.reason)
            return None, []
        assert self.result is not None and self.plan is not None
        if then is not None and repo.answers_claim:
            try:
                return await repo.record_then_claim(self.claim, self.worker, self.result, self.plan, self.now,
                                                    self.rejection_limit, self.remember_calls, then)
            except Exception as exc:  # noqa: BLE001 - sorted: an outage is the caller's, else write it alone
                if unreachable(exc):
                    raise
                # The claim's part failed (a bug: it rolled the answer back too): the answer
                # must still be written, on its own.
                log.exception("campaign %s chunk %s: claiming the next chunk with this answer failed; the "
                              "answer is written alone", self.claim.campaign_id, self.claim.chunk_id)
        return await repo.record_outcome(self.claim, self.worker, self.result, self.plan, self.now,
                                         self.rejection_limit, self.remember_calls), []


# What a write did: the step the ledger applied (None: the chunk is no longer the claim's), and
# the chunks claimed in the same transaction (see LedgerWrite.apply).
Written = tuple[NextStep | None, ledger.Claimed]
NOTHING_WRITTEN: Written = (None, [])


class Outbox:
    def __init__(self, repo: Repository, journal: Journal | None, health: DatabaseHealth,
                 max_backoff_seconds: float = 2.0, database: str = "") -> None:
        self.repo = repo
        self.database = database
        self.journal = journal
        self.health = health
        self.max_backoff_seconds = max_backoff_seconds
        self._queue: deque[tuple[LedgerWrite, asyncio.Future[Written]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self._journaled: set[str] = set()
        self._attempts: dict[str, LedgerWrite] = {}  # writes not finished yet
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def drained(self) -> None:
        """Until every earlier answer is in the database."""
        await self._empty.wait()

    async def settled(self) -> None:
        """Until every answer already being written when called is in the database."""
        pending = set(self._attempts)
        while pending & self._attempts.keys():
            await asyncio.sleep(0.01)

    async def write(self, item: LedgerWrite, then: ledger.NextClaim | None = None) -> Written:
        """What the write did (``Written``). Returns once the database has it; a cancellation
        before that leaves it in the journal, so it is written at the next start. ``then``: a
        claim to make in the same transaction, only when the write goes straight through (an
        answer waiting behind others, or for the database, claims nothing)."""
        attempt = asyncio.ensure_future(self._direct(item, then) if not self._queue else self._enqueue(item))
        self._attempts[item.id] = item
        attempt.add_done_callback(lambda _: self._attempts.pop(item.id, None))
        slow = asyncio.get_running_loop().call_later(JOURNAL_AFTER_SECONDS, self._journal_if_running, item, attempt)
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            if not attempt.done():
                self._journal(item)
            raise
        finally:
            slow.cancel()

    def _journal_if_running(self, item: LedgerWrite, attempt: asyncio.Future[Written]) -> None:
        if not attempt.done():
            self._journal(item)

    async def _direct(self, item: LedgerWrite, then: ledger.NextClaim | None) -> Written:
        try:
            written = await item.apply(self.repo, then)
        except Exception as exc:  # noqa: BLE001 - sorted below: an outage waits, a bug is raised
            if not unreachable(exc):
                raise
            self.health.failed(exc, "writing an answer from Plum")
            return await self._enqueue(item)
        self._done(item)
        return written

    async def _enqueue(self, item: LedgerWrite) -> Written:
        self._journal(item)
        if self._closed:  # the daemon stopped: the journal has it for the next start
            return NOTHING_WRITTEN
        future: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._empty.clear()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        delay = FIRST_BACKOFF_SECONDS
        while self._queue:
            item, future = self._queue[0]
            try:
                written = await item.apply(self.repo)
            except Exception as exc:  # noqa: BLE001 - an outage is retried; a bug ends this write
                if unreachable(exc):
                    self.health.failed(exc, "writing an answer from Plum")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_seconds)
                    continue
                log.exception("campaign %s chunk %s: this answer could not be written; it stays in the journal "
                              "%s and is tried again at the next start", item.claim.campaign_id,
                              item.claim.chunk_id, self.journal.path if self.journal else "-")
                self._queue.popleft()
                if not future.done():
                    future.set_exception(exc)
                continue
            self._queue.popleft()
            self._done(item)
            self.health.ok()
            if not future.done():
                future.set_result(written)
            delay = FIRST_BACKOFF_SECONDS
        self._empty.set()

    def _journal(self, item: LedgerWrite) -> None:
        if self._closed:
            if item.id not in self._journaled:
                log.error("campaign %s chunk %s: an answer from Plum could be neither written nor journaled (the "
                          "daemon had stopped): %s", item.claim.campaign_id, item.claim.chunk_id, item.to_json())
            return
        if self.journal is not None and item.id not in self._journaled:
            item.database = self.database
            self.journal.append(item.id, item.to_json())
            self._journaled.add(item.id)

    def _done(self, item: LedgerWrite) -> None:
        if self._closed:
            return  # the journal keeps it; applying it again at the next start changes nothing
        if self.journal is not None and item.id in self._journaled:
            self._journaled.discard(item.id)
            self.journal.mark_done(item.id)

    def close(self) -> int:
        """At shutdown: what is still waiting is in the journal (written at the next start)."""
        if self._drainer is not None:
            self._drainer.cancel()
        left = len(self._queue)
        for item, future in self._queue:
            self._journal(item)
            if not future.done():
                future.cancel()
        for item in list(self._attempts.values()):  # still being written: the journal keeps them too
            self._journal(item)
        self._closed = True
        self._queue.clear()
        self._empty.set()
        if self.journal is not None:
            self.journal.close()
        return left


async def replay(repo: Repository, base: Path, database: str) -> int:
    """At start, before any claim: apply the journals left by daemons that stopped with answers
    unwritten (this one's last life included). Returns how many entries were applied."""
    applied = 0
    for path, handle in journal_file.leftovers(base):
        try:
            handle.seek(0)
            entries, torn = journal_file.pending_entries(iter(handle.read().splitlines()))
            if torn:
                log.warning("journal %s: %d line(s) could not be read (cut short by a kill while being "
                            "written; their answers were never acknowledged) and are skipped", path, torn)
            done, failed = await _apply_entries(repo, path, entries, database)
            applied += done
            if done:
                log.warning("journal %s: %d answer(s) from Plum that could not be written while the database "
                            "was unreachable are now in the ledger", path, done)
            if failed:
                kept = path.with_name(f"{path.name}.failed-{int(time.time())}")
                path.rename(kept)
                log.error("journal %s: %d entr(y/ies) could not be applied; kept in %s for an admin to check",
                          path, len(failed), kept)
                continue
            handle.truncate(0)
        finally:
            handle.close()
        if path != base:
            path.unlink(missing_ok=True)
    return applied


async def _apply_entries(repo: Repository, path: Path, entries: list[dict[str, Any]],
                         database: str) -> tuple[int, list[dict[str, Any]]]:
    """Apply each entry written for this database; an outage stops the start-up (the journal
    stays), an entry of another database or one that fails is kept aside, never dropped."""
    done, failed = 0, []
    for entry in entries:
        if entry.get("database", database) != database:
            log.error("journal %s: an entry for database %s, not this daemon's %s: not applied", path,
                      entry.get("database"), database)
            failed.append(entry)
            continue
        try:
            await LedgerWrite.from_entry(entry).apply(repo)
        except Exception as exc:  # noqa: BLE001 - an outage is raised; anything else is kept aside
            if unreachable(exc):
                raise
            log.exception("journal %s: entry %s (campaign %s chunk %s) could not be applied", path, entry["id"],
                          entry["claim"].campaign_id, entry["claim"].chunk_id)
            failed.append(entry)
            continue
        done += 1
    return done, failed
