"""Drives chunks through the limits, the client and the ledger.

For each request: a concurrency slot, then a rate grant, then the claim (the
chunk becomes ``submitting`` and a ``sending`` submission row is committed),
then the POST, then the outcome is recorded. The order matters: a chunk is
never ``submitting`` while it waits for a limit, so a crash while waiting
cannot make a never-sent chunk look ``unknown``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy.exc import SQLAlchemyError

from . import windows
from .chunking import chunk_csv
from .callbacks import signed_url
from .config import Settings
from .contacts import unpack_extra
from .errors import DatabaseError, InvalidRequest
from .ingest import recent_since
from .insight import BulkQueueRequest, InsightClient, SubmitResult
from .metrics import Metrics
from .models import Outcome
from .ratelimit import RateLimiter
from .ledger import ClaimedChunk, ClaimTimes
from .repository import Repository, utcnow
from .retry import NextStep, Step, next_step

log = logging.getLogger("scheduler.dispatcher")
submission_log = logging.getLogger("scheduler.submission")

# A submitting chunk's lease outlives its request by this much; after that any
# daemon may declare it unknown.
LEASE_SLACK_SECONDS = 60
# How long before its rate slot a chunk is claimed and its request built: long
# enough for one claim transaction and one CSV, short enough that a kill in
# between almost never leaves a never-sent chunk `unknown` (at 0.05/s a whole
# interval would be 20 s).
CLAIM_LEAD_SECONDS = 0.25


class Dispatcher:
    def __init__(
        self,
        repo: Repository,
        client: InsightClient,
        settings: Settings,
        worker: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        rand: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.metrics = metrics or Metrics()
        self.client = client
        self.worker = worker
        self.clock = clock
        self.rand = rand or random.Random()
        self.settings = settings
        self.limiter = RateLimiter(
            settings.submission.rate_limit_per_second, settings.submission.rate_limit_margin_seconds
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_campaign_id = 0
        self._loop_task: asyncio.Task[Any] | None = None

    # -- control -----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def reconfigure(self, settings: Settings) -> None:
        """New rate, concurrency, credentials and retry policy apply to the next request."""
        self.settings = settings
        self.limiter.configure(settings.submission.rate_limit_per_second, settings.submission.rate_limit_margin_seconds)
        self.client.reconfigure(settings.insight)
        self._slot_freed.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def halt(self) -> None:
        """No new claim, and no claimed request leaves (it is given back)."""
        self._stopping = True
        self.wake()
        self._slot_freed.set()

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming; let requests in flight finish for up to the grace period."""
        self.halt()
        await self._stop_claiming()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace_seconds)
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    # -- the loop ----------------------------------------------------------------

    async def _stop_claiming(self) -> None:
        # Cancelling is safe at any point of a round: waiting for a slot claims
        # nothing, and a claim that committed meanwhile is given back (_claim_shielded).
        loop_task = self._loop_task
        if loop_task is None or loop_task.done():
            return
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)

    async def run(self) -> None:
        self._loop_task = asyncio.current_task()
        self.limiter.hold_off()
        while not self._stopping:
            try:
                await self._one_round()
            except (DatabaseError, SQLAlchemyError, OSError) as exc:
                log.error("database problem while claiming, retrying in %ss: %s",
                          self.settings.scheduler.poll_interval_seconds, exc)
                await asyncio.sleep(self.settings.scheduler.poll_interval_seconds)
            except Exception:  # noqa: BLE001 - a bug must not silently stop all sending
                log.exception("claiming failed unexpectedly; trying again in %ss",
                              self.settings.scheduler.poll_interval_seconds)
                await asyncio.sleep(self.settings.scheduler.poll_interval_seconds)

    async def _one_round(self) -> None:
        await self._wait_for_slot()
        # Book the next send slot; we wake just before it to claim and build the
        # request, then it leaves exactly at the slot (see _send).
        slot = await self.limiter.reserve(min(self.limiter.interval_seconds, CLAIM_LEAD_SECONDS))
        if self._stopping:
            return
        claim = await self._claim_shielded()
        if claim is None:
            await self._idle()
            return
        self._last_campaign_id = claim.campaign_id
        task = asyncio.get_running_loop().create_task(self._send(claim, slot))
        self._in_flight.add(task)
        self.metrics.in_flight.set(len(self._in_flight))
        task.add_done_callback(self._finished)

    async def _claim_shielded(self) -> ClaimedChunk | None:
        # A claim that committed must not be lost to a cancellation: give it back.
        now = self.clock()
        lease = timedelta(seconds=self.settings.insight.timeout_seconds + LEASE_SLACK_SECONDS)
        times = ClaimTimes(now=now, lease_until=now + lease, open_until=now + windows.MIN_WINDOW,
                           opens_by=now + timedelta(seconds=self.settings.scheduler.lead_seconds))
        task = asyncio.ensure_future(self.repo.claim_next_chunk(
            self.worker, times, self._last_campaign_id, recent_since(self.settings, now)))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            claim = await task
            if claim is not None:
                await self.repo.release_claim(claim)
            raise

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self.metrics.in_flight.set(len(self._in_flight))
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("sending a chunk failed unexpectedly", exc_info=task.exception())

    async def _wait_for_slot(self) -> None:
        while len(self._in_flight) >= self.settings.submission.max_concurrency and not self._stopping:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def _idle(self) -> None:
        now = self.clock()
        timeout = self.settings.scheduler.poll_interval_seconds
        ready_at = await self.repo.next_ready_at(now)
        if ready_at is not None:
            timeout = max(0.0, min(timeout, (ready_at - now).total_seconds()))
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- one request ----------------------------------------------------------------

    async def _send(self, claim: ClaimedChunk, slot: float) -> None:
        started = asyncio.get_running_loop().time()
        now = self.clock()
        try:
            closed = int(claim.call_window(now)[1].timestamp()) <= int(now.timestamp()) + 1
            request = None if closed else await self._build_request(claim)
        except Exception:  # noqa: BLE001 - a bug here must not leave a never-sent chunk `submitting`
            log.exception("campaign %s chunk %s: the request could not be built; the chunk is given back "
                          "unsent", claim.campaign_id, claim.chunk_id)
            await self.repo.release_claim(claim)
            return
        if request is None:
            # The window closed between the claim and now: nothing to ask Plum for. A
            # calling window is moved to the next one by the tick; the campaign's end is final.
            await self.repo.release_claim(claim, expired_at=None if claim.window_end_at else now)
            return
        try:
            result = await self._post(request, slot)
            if result is None:  # the daemon began to stop before the slot: nothing was sent
                await self.repo.release_claim(claim)
                return
        except asyncio.CancelledError:
            elapsed = asyncio.get_running_loop().time() - started
            result = SubmitResult(Outcome.UNKNOWN, None, "outcome unknown: the daemon stopped while waiting "
                                  "for Plum's answer", None, elapsed)
            await self._record(claim, result)
            raise
        await self._record(claim, result)

    async def _post(self, request: BulkQueueRequest, slot: float) -> SubmitResult | None:
        await self.limiter.wait_until(slot)
        if self._stopping:
            return None
        try:
            return await self.client.bulk_queue(request)
        except InvalidRequest as exc:
            return SubmitResult(Outcome.CLIENT_BUG, None, f"request refused before sending: {exc}", None, 0.0)

    async def _build_request(self, claim: ClaimedChunk) -> BulkQueueRequest:
        rows = await self.repo.chunk_contacts(claim.chunk_id)
        start, end = claim.call_window(self.clock())
        names = json.loads(claim.contacts_header or '{"extra": []}')["extra"]
        csv_bytes = chunk_csv(
            self.settings.insight.phone_column,
            names,
            ((phone, unpack_extra(extra, len(names))) for phone, extra in rows),
            self.settings.insight.number_format,
        )
        return BulkQueueRequest(
            survey_id=claim.survey_id,
            instance_id=claim.instance_id,
            csv_bytes=csv_bytes,
            start_timestamp=int(start.timestamp()),
            end_timestamp=int(end.timestamp()),
            max_attempts=claim.max_attempts,
            reattempt_wait=claim.reattempt_wait,
            result_url=claim.result_url or self._signed_result_url(claim),
        )

    def _signed_result_url(self, claim: ClaimedChunk) -> str | None:
        callbacks = self.settings.callbacks
        if not callbacks.public_url:
            return None
        return signed_url(callbacks.public_url, callbacks.secret.get_secret_value(), claim.campaign_id,
                          claim.chunk_id)

    async def _record(self, claim: ClaimedChunk, result: SubmitResult) -> None:
        plan = next_step(
            result.outcome, result.status_code, result.error, claim.attempt, claim.contact_count, self.clock(),
            self.settings.submission.retry, self.rand, result.retry_after_seconds,
        )
        # Shielded: a shutdown must never lose an outcome row.
        task = asyncio.ensure_future(self.repo.record_outcome(
            claim, self.worker, result, plan, self.clock(), self.settings.submission.max_rejections_without_success))
        applied: NextStep | None = None
        try:
            applied = await asyncio.shield(task)
        except asyncio.CancelledError:
            applied = await task
            raise
        finally:
            self._log(claim, result, applied)
            self._observe(result)
        if applied is not None and applied.step in (Step.SPLIT, Step.RETRY):
            self.wake()

    def _observe(self, result: SubmitResult) -> None:
        code = "none" if result.status_code is None else str(result.status_code)
        self.metrics.submissions.labels(outcome=result.outcome.value, status_code=code).inc()
        self.metrics.latency.observe(result.latency_seconds)

    def _log(self, claim: ClaimedChunk, result: SubmitResult, applied: NextStep | None) -> None:
        """What was stored: the step the ledger applied (none when another daemon owns the chunk now)."""
        fields = {
            "campaign": claim.campaign_id, "chunk": claim.chunk_id, "attempt": claim.attempt,
            "status_code": result.status_code, "outcome": result.outcome.value,
            "next": applied.step.value if applied is not None else "none (the chunk is no longer ours)",
            "latency_seconds": round(result.latency_seconds, 4), "contacts": claim.contact_count,
        }
        level = logging.INFO if result.outcome is Outcome.ACCEPTED else logging.WARNING
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        if result.error and result.outcome is not Outcome.ACCEPTED:
            text += f" error={result.error!r}"
        submission_log.log(level, "submission %s", text, extra={"fields": fields | {"error": result.error}})
        if applied is None and result.outcome is Outcome.ACCEPTED:
            log.error("campaign %s chunk %s: Plum accepted this request after the chunk was taken from this "
                      "daemon (declared unknown, then resent and claimed again): its contacts may be called "
                      "twice; see `campaign show %s`", claim.campaign_id, claim.chunk_id, claim.campaign_id)
