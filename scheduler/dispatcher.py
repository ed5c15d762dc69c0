"""Drives chunks through the limits, the client and the ledger.

For each request: a concurrency slot, earlier answers written (the outbox),
the account's circuit breaker, then a rate grant, then the claim (the chunk
becomes ``submitting`` and a ``sending`` submission row is committed), then the
POST, then the outcome is recorded. The order matters: a chunk is never
``submitting`` while it waits for a limit, so a crash while waiting cannot make
a never-sent chunk look ``unknown``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy.exc import SQLAlchemyError

from . import windows
from .breaker import Breaker, Change, Health, Permit, account_key, health_of
from .chunking import body_format, packed_chunk_csv
from .callbacks import signed_url
from .config import Settings
from .errors import DatabaseError, InvalidRequest
from .ingest import recent_since
from .insight import BulkQueueRequest, InsightClient, SubmitResult
from .metrics import Metrics
from .models import Outcome
from .ratelimit import AnswerSpacing, ClockOffset, LatePushes, RateLimiter
from .ledger import (ACCOUNT_FULL, ENDED_REASON, SLOT_BUILD_SECONDS, AccountFull, AccountLimits, Claimed,
                     ClaimedChunk, ClaimTimes, NextClaim, Payload, Slot, outage_note)
from .outbox import DatabaseHealth, LedgerWrite, Outbox, unreachable
from .repository import Repository, utcnow
from .retry import NextStep, Step, during_outage, next_step, plum_said

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
CLAIM_TIME_SMOOTHING = 0.2
# Extra lead while no place in flight was short for PLACES_MEMORY_SECONDS (see _claim_lead).
SPARE_LEAD_SECONDS = 0.02
PLACES_MEMORY_SECONDS = 1.0
# A request later than margin / this pushes the schedule: the rest of the margin is left for
# jitter on the way to Plum (with 1/2, a single daemon put 51 in one second at R=50 here).
PUSH_FROM_MARGIN_SHARE = 4
CLOCK_SAMPLES = 8
# With the account's requests all out (perhaps other daemons'), how often to look again.
ROOM_POLL_SECONDS = 0.05
# On a cancelled write (shutdown), how long to let it finish before leaving it to the journal.
WRITE_GRACE_SECONDS = 2.0
RETRY_AFTER_HOLDS = (429, 503)  # a Retry-After on these holds the whole account


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
        outbox: Outbox | None = None,
    ) -> None:
        self.repo = repo
        self.outbox = outbox or Outbox(repo, None, DatabaseHealth(clock))
        self.breaker = Breaker(settings.submission.outage)
        self.account = account_key(settings.insight.base_url, settings.insight.username)
        self._breaker_changed = asyncio.Event()
        self.breaker_dirty = False
        self.metrics = metrics or Metrics()
        self.metrics.breaker_open.labels(account=account_key(settings.insight.base_url,
                                                             settings.insight.username)).set(0)
        self.client = client
        self.worker = worker
        self.clock = clock
        self.rand = rand or random.Random()
        self.settings = settings
        self.limiter = RateLimiter(
            settings.submission.rate_limit_per_second, settings.submission.rate_limit_margin_seconds
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pushes: set[asyncio.Task[None]] = set()  # late requests moving the schedule back
        self.spacing = AnswerSpacing()
        self.late_pushes = LatePushes(settings.submission.rate_limit_margin_seconds / PUSH_FROM_MARGIN_SHARE)
        self._slot_freed = asyncio.Event()
        self._wake = asyncio.Event()
        self._claims_open = asyncio.Event()
        self._claims_open.set()
        self._stopping = False
        self._last_campaign_id = 0
        self._next_slot = 0.0  # loop time: this daemon's estimate of the account's next free slot
        self._db_clock = ClockOffset()
        self._claim_seconds = 0.01  # smoothed duration of a claim transaction
        self._places_short_at = 0.0  # loop time: the last time every place in flight was taken
        self._waiting_for_place = False  # the claim loop waits for a request to end (see _claim_with_answer)
        self._background: set[asyncio.Future[Any]] = set()  # claims given back after a cancelled answer
        self._loop_task: asyncio.Task[Any] | None = None

    # -- control -----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def reconfigure(self, settings: Settings) -> None:
        """New rate, concurrency, credentials and retry policy apply to the next request."""
        self.settings = settings
        self.limiter.configure(settings.submission.rate_limit_per_second, settings.submission.rate_limit_margin_seconds)
        self.late_pushes.threshold_seconds = settings.submission.rate_limit_margin_seconds / PUSH_FROM_MARGIN_SHARE
        self.client.reconfigure(settings.insight)
        self.breaker.reconfigure(settings.submission.outage)
        self._slot_freed.set()
        self._breaker_changed.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def hold_claims(self) -> None:
        """No new claim until ``open_claims`` (requests already claimed go on)."""
        self._claims_open.clear()

    def open_claims(self) -> None:
        self._claims_open.set()

    def halt(self) -> None:
        """No new claim, and no claimed request leaves (it is given back)."""
        self._stopping = True
        self._claims_open.set()  # the claim loop sees _stopping and ends
        self.wake()
        self._slot_freed.set()
        self._breaker_changed.set()

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
        if self._background:  # claims made with a cancelled answer, given back
            await asyncio.wait(set(self._background), timeout=WRITE_GRACE_SECONDS)
        if self._pushes:  # before the repository closes
            await asyncio.wait(set(self._pushes), timeout=WRITE_GRACE_SECONDS)
        for task in list(self._pushes):
            task.cancel()

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
        await self._learn_database_clock()
        while not self._stopping:
            try:
                await self._claims_open.wait()
                await self._one_round()
            except (DatabaseError, SQLAlchemyError, OSError) as exc:
                if not unreachable(exc):
                    log.error("database problem while claiming, retrying in %ss: %s",
                              self.settings.scheduler.poll_interval_seconds, exc)
                self.outbox.health.failed(exc, "claiming the next chunk")
                # half a poll: sending resumes well within two polls of the database's return
                await asyncio.sleep(self.settings.scheduler.poll_interval_seconds / 2)
            except Exception:  # noqa: BLE001 - a bug must not silently stop all sending
                log.exception("claiming failed unexpectedly; trying again in %ss",
                              self.settings.scheduler.poll_interval_seconds)
                await asyncio.sleep(self.settings.scheduler.poll_interval_seconds)

    async def _one_round(self) -> None:
        await self._wait_for_slot()
        await self.outbox.drained()  # answers of earlier requests reach the database first
        permit = await self._wait_for_breaker()
        if permit is None:
            return
        # Wake just before the account's next send slot to claim (which books the slot) and
        # build the request; it then leaves exactly at its slot (see _send).
        try:
            await self._near_rate_slot()
            claims = [] if self._stopping else await self._claim_shielded(self._batch_size(permit))
        except BaseException:
            self.breaker.give_back(permit)
            raise
        if isinstance(claims, AccountFull) or not claims:
            self.breaker.give_back(permit)
            if claims is ACCOUNT_FULL:
                await self._wait_for_room()
            elif not self._stopping:
                await self._idle()
            return
        self.outbox.health.ok()
        self._last_campaign_id = claims[-1][0].campaign_id
        for claim, rows in claims:
            self._start_sending(claim, rows, permit)

    def _start_sending(self, claim: ClaimedChunk, rows: Payload, permit: Permit) -> None:
        slot = self._local_slot(claim.slot)
        self._next_slot = slot + self._interval()
        if permit is Permit.PROBE:
            self._note_probe(claim)
        task = asyncio.get_running_loop().create_task(self._send(claim, rows, slot, permit))
        self._in_flight.add(task)
        self.metrics.in_flight.set(len(self._in_flight))
        task.add_done_callback(self._finished)

    def _batch_size(self, permit: Permit) -> int:
        """How many chunks one claim takes: this daemon's free places, but only as many slots as
        fall within the claim's lead (a claim holds one of the account's places until its answer
        is written, so claiming a slot far ahead wastes a place); a probe goes alone."""
        if permit is Permit.PROBE:
            return 1
        free = self.settings.submission.max_concurrency - len(self._in_flight)
        by_rate = 1 + int(self._claim_lead() / self._interval())
        return max(1, min(free, by_rate))

    def _claim_lead(self) -> float:
        # As long before the slot as a claim takes (twice, for safety), plus the time to build
        # the request. Earlier wastes a place; later, and the database books a later slot
        # (never one that has passed), which costs throughput. While places are plentiful an
        # early claim wastes nothing, and a late one (a busy loop or ledger thread) costs rate.
        lead = 2 * self._claim_seconds + SLOT_BUILD_SECONDS + 0.005
        if asyncio.get_running_loop().time() - self._places_short_at > PLACES_MEMORY_SECONDS:
            lead += SPARE_LEAD_SECONDS
        return min(CLAIM_LEAD_SECONDS, lead)

    async def _near_rate_slot(self) -> None:
        """Sleep until shortly before the account's next free slot. At low rates the database is
        asked (another daemon, or this one's earlier life, may have booked ahead); at high rates
        this daemon's own last slot says it, and a claim waits at most a few intervals."""
        loop = asyncio.get_running_loop()
        lead = self._claim_lead()  # a claim holds one of the account's places: claim just in time
        if self.limiter.interval_seconds > CLAIM_LEAD_SECONDS:
            wait = await self.repo.rate_wait(self.account)
        else:
            wait = self._next_slot - loop.time()
        if wait > lead:
            await asyncio.sleep(wait - lead)

    async def _learn_database_clock(self) -> None:
        """Before the first claim: a few readings of the database's clock, so the first slots are
        not turned into our time with one slow (cold) answer, which made a joining daemon's first
        requests leave late next to the others' on-time ones (21 in one second at R=20)."""
        for _ in range(CLOCK_SAMPLES):
            try:
                self._db_clock.observe(await self.repo.database_clock())
            except (DatabaseError, SQLAlchemyError, OSError):
                return  # the claim loop reports the database

    def _time_claim(self, seconds: float) -> None:
        """How long a claim takes, smoothed (it decides how early to claim)."""
        self._claim_seconds += CLAIM_TIME_SMOOTHING * (min(seconds, CLAIM_LEAD_SECONDS) - self._claim_seconds)

    def _local_slot(self, slot: Slot | None) -> float:
        """A booked slot in this loop's time. It may have passed (the claim came back after it):
        it is kept as it is, so the request's lateness counts from the account's schedule and
        moves it (see _push_if_late), rather than from now, which would hide it."""
        now = asyncio.get_running_loop().time()
        if slot is None:
            return now
        self._db_clock.observe(slot.db_now_epoch)
        return now + self._db_clock.seconds_until(slot.at_epoch)

    async def _wait_for_room(self) -> None:
        """The account has max_concurrency requests out (maybe other daemons'): wait for one of
        ours to end, or a short while for theirs."""
        self._places_short_at = asyncio.get_running_loop().time()
        self._slot_freed.clear()
        try:
            await asyncio.wait_for(self._slot_freed.wait(), ROOM_POLL_SECONDS)
        except asyncio.TimeoutError:
            pass

    def limits(self) -> AccountLimits:
        return AccountLimits(self.account, self._interval(), self.settings.submission.max_concurrency)

    def _interval(self) -> float:
        """Between two of this daemon's slots: the rate limit's interval, or more when answers
        come back fast enough that requests leaving together would queue here (AnswerSpacing)."""
        return max(self.limiter.interval_seconds, self.spacing.seconds(self.settings.submission.max_concurrency))

    async def _claim_shielded(self, most: int) -> list[tuple[ClaimedChunk, Payload]] | AccountFull:
        # Claims that committed must not be lost to a cancellation: give them back.
        then = self._next_claim(most)
        task = asyncio.ensure_future(self.repo.claim_chunks(
            then.worker, then.times, then.after_campaign_id, then.recent_since, then.limits, then.most,
            then.body_format))
        started = asyncio.get_running_loop().time()
        task.add_done_callback(lambda _: self._time_claim(asyncio.get_running_loop().time() - started))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            claims = await task
            if isinstance(claims, list) and claims:
                await asyncio.shield(asyncio.gather(*(self._release(claim) for claim, _ in claims)))
            raise

    def _next_claim(self, most: int) -> NextClaim:
        """A claim's arguments, as of now."""
        now = self.clock()
        lease = timedelta(seconds=self.settings.insight.timeout_seconds + LEASE_SLACK_SECONDS)
        times = ClaimTimes(now=now, lease_until=now + lease, open_until=now + windows.MIN_WINDOW,
                           opens_by=now + timedelta(seconds=self.settings.scheduler.lead_seconds))
        return NextClaim(self.worker, times, self._last_campaign_id, recent_since(self.settings, now), self.limits(),
                         most, body_format(self.settings.insight.phone_column, self.settings.insight.number_format))

    def _claim_with_answer(self) -> NextClaim | None:
        """The claim to make in an answer's transaction (where the repository can): only when the
        claim loop is waiting for the place in flight this answer frees, and would claim at once
        when woken (Plum not held, claims open, the next rate slot within the claim's lead). One
        transaction and one round of the claim loop fewer for every request (issue 15). Never
        with a probe: while the breaker is not closed, requests go one at a time."""
        if not (self._waiting_for_place and self.repo.answers_claim and self._claims_open.is_set()) or self._stopping:
            return None
        if self.breaker.is_open or self.breaker.wait_seconds(time.monotonic()) > 0 or self.outbox.waiting:
            return None
        lead = self._claim_lead()
        if (self.limiter.interval_seconds > CLAIM_LEAD_SECONDS
                or self._next_slot - asyncio.get_running_loop().time() > lead):
            return None
        free = self.settings.submission.max_concurrency - len(self._in_flight) + 1  # this answer's place
        return self._next_claim(max(1, min(free, 1 + int(lead / self._interval()))))

    def _send_claimed(self, claims: Claimed) -> None:
        """Chunks claimed with an answer leave as a claim loop round's would (while stopping,
        they are given back unsent)."""
        if not isinstance(claims, list) or not claims:
            return
        if self._stopping:
            self._give_back(claims)
            return
        self.outbox.health.ok()
        self._last_campaign_id = claims[-1][0].campaign_id
        for claim, rows in claims:
            self._start_sending(claim, rows, Permit.NORMAL)

    def _give_back(self, claims: Claimed) -> None:
        if not isinstance(claims, list) or not claims:
            return
        release = asyncio.ensure_future(asyncio.gather(*(self._release(claim) for claim, _ in claims)))
        self._background.add(release)
        release.add_done_callback(self._background.discard)

    def _give_back_later(self, task: asyncio.Future[Any]) -> None:
        """An answer whose writing was cancelled (shutdown) may still claim chunks when it ends:
        they go back unsent, so none is left `submitting` to turn `unknown` (stop() waits)."""
        def given_back(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._give_back(done.result()[1])
        task.add_done_callback(given_back)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self.metrics.in_flight.set(len(self._in_flight))
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("sending a chunk failed unexpectedly", exc_info=task.exception())

    async def _wait_for_breaker(self) -> Permit | None:
        """A permit for one request: at once while Plum accepts requests; while the breaker is
        open (or Plum asked for a pause), one probe at a time when its wait is over."""
        while not self._stopping:
            now = time.monotonic()
            permit = self.breaker.permit(now)
            if permit is not None:
                return permit
            self._breaker_changed.clear()
            wait = min(self.breaker.wait_seconds(now), self.settings.scheduler.poll_interval_seconds)
            try:
                await asyncio.wait_for(self._breaker_changed.wait(), max(0.01, wait))
            except asyncio.TimeoutError:
                pass
        return None

    def _note_probe(self, claim: ClaimedChunk) -> None:
        self.breaker_dirty = True
        self.metrics.breaker_probes.labels(account=self.account).inc()
        log.info("Plum account %s: probe %d (campaign %s chunk %s) while the circuit breaker is open",
                 self.account, self.breaker.probes, claim.campaign_id, claim.chunk_id)

    async def _wait_for_slot(self) -> None:
        while len(self._in_flight) >= self.settings.submission.max_concurrency and not self._stopping:
            self._places_short_at = asyncio.get_running_loop().time()
            self._slot_freed.clear()
            self._waiting_for_place = True
            try:
                await self._slot_freed.wait()
            finally:
                self._waiting_for_place = False

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

    async def _release(self, claim: ClaimedChunk, expired_at: datetime | None = None) -> None:
        """Give an unsent claim back (through the outbox: the database may be down)."""
        reason = outage_note(ENDED_REASON, self.breaker.since)
        await self.outbox.write(LedgerWrite("release", claim, self.clock(), worker=self.worker,
                                            expired_at=expired_at, reason=reason))

    async def _send(self, claim: ClaimedChunk, rows: Payload, slot: float, permit: Permit = Permit.NORMAL) -> None:
        started = asyncio.get_running_loop().time()
        now = self.clock()
        try:
            closed = int(claim.call_window(now)[1].timestamp()) <= int(now.timestamp()) + 1
            request = None if closed else self._build_request(claim, rows)
        except Exception:  # noqa: BLE001 - a bug here must not leave a never-sent chunk `submitting`
            log.exception("campaign %s chunk %s: the request could not be built; the chunk is given back "
                          "unsent", claim.campaign_id, claim.chunk_id)
            self.breaker.give_back(permit)
            await self._release(claim)
            return
        if request is None:
            # The window closed between the claim and now: nothing to ask Plum for. A
            # calling window is moved to the next one by the tick; the campaign's end is final.
            self.breaker.give_back(permit)
            await self._release(claim, expired_at=None if claim.window_end_at else now)
            return
        sent: list[bool] = []
        try:
            result = await self._post(request, slot, started, permit, sent)
            if result is None:  # stopping, or Plum went down before the slot: nothing was sent
                self.breaker.give_back(permit)
                await self._release(claim)
                return
        except asyncio.CancelledError:
            if not sent:  # stopped while waiting for its slot: nothing left, give it back
                self.breaker.give_back(permit)
                await self._release(claim)
                raise
            elapsed = asyncio.get_running_loop().time() - started
            result = SubmitResult(Outcome.UNKNOWN, None, "outcome unknown: the daemon stopped while waiting "
                                  "for Plum's answer", None, elapsed)
            await self._record(claim, result, permit, learn=False)
            raise
        await self._record(claim, result, permit)

    async def _post(self, request: BulkQueueRequest, slot: float, booked_at: float, permit: Permit,
                    sent: list[bool]) -> SubmitResult | None:
        await self.limiter.wait_until(slot)
        if self._stopping or not self.breaker.still_permits(permit):
            return None
        sent.append(True)  # from here the request may reach Plum: a cancellation means unknown
        loop = asyncio.get_running_loop()
        left_at = loop.time()
        try:
            return await self.client.bulk_queue(
                request, lambda: self._push_if_late(self.late_pushes.owed(booked_at, slot, left_at, loop.time())))
        except InvalidRequest as exc:
            return SubmitResult(Outcome.CLIENT_BUG, None, f"request refused before sending: {exc}", None, 0.0)

    def _push_if_late(self, late_seconds: float) -> None:
        """A request that left later than its slot moves the account's later slots back as much
        (ratelimit.LatePushes says how much): else, R slots on, another daemon's on-time request
        would put R + 1 requests in one second (the margin absorbs only a little lateness).
        Booked slots keep their time; a daemon that booked one is at most a few slots ahead, far
        fewer than R."""
        if late_seconds <= 0:
            return
        self._next_slot += late_seconds
        task = asyncio.get_running_loop().create_task(self._push_schedule(late_seconds))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _push_schedule(self, seconds: float) -> None:
        try:
            await self.repo.push_rate_schedule(self.account, seconds)
        except (DatabaseError, SQLAlchemyError, OSError) as exc:  # the claim loop reports the database
            log.debug("could not move the account's rate schedule by %.3f s: %s", seconds, exc)

    def _build_request(self, claim: ClaimedChunk, rows: Payload) -> BulkQueueRequest:
        start, end = claim.call_window(self.clock())
        if isinstance(rows, bytes):  # as built at ingestion, for these contacts and this config
            csv_bytes = rows
        else:
            names = json.loads(claim.contacts_header or '{"extra": []}')["extra"]
            csv_bytes = packed_chunk_csv(self.settings.insight.phone_column, names, rows,
                                         self.settings.insight.number_format)
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

    async def _record(self, claim: ClaimedChunk, result: SubmitResult, permit: Permit = Permit.NORMAL,
                      learn: bool = True) -> None:
        if result.status_code is not None:  # an answer came (not a refused connection or a timeout)
            self.spacing.observe(result.latency_seconds)  # before the claim this answer may make
        plan = self._plan(claim, result, permit, learn)
        write = LedgerWrite("record", claim, self.clock(), result, plan, self.worker,
                            self.settings.submission.max_rejections_without_success,
                            remember_calls=self.settings.contacts.min_hours_between_calls > 0)
        # Shielded: a shutdown must never lose an outcome row (what the database cannot take
        # in time is in the journal: see outbox.py).
        task = asyncio.ensure_future(self.outbox.write(write, self._claim_with_answer() if learn else None))
        applied: NextStep | None = None
        written = False  # (a shutdown may leave the answer to the journal, not yet in the ledger)
        try:
            applied, claims = await asyncio.shield(task)
            written = True
        except asyncio.CancelledError:
            self._give_back_later(task)
            await asyncio.wait({task}, timeout=WRITE_GRACE_SECONDS)
            written = task.done() and not task.cancelled() and not task.exception()
            applied = task.result()[0] if written else None
            raise
        finally:
            self._log(claim, result, applied, permit, written)
            self._observe(result)
        self._send_claimed(claims)
        if applied is not None and applied.step in (Step.SPLIT, Step.RETRY):
            self.wake()

    def _plan(self, claim: ClaimedChunk, result: SubmitResult, permit: Permit, learn: bool) -> NextStep:
        """What the answer means for the chunk, once the breaker has learnt from it: a failure
        while Plum is down for everyone does not use up one of the chunk's tries."""
        health = health_of(result.outcome, result.status_code) if learn else Health.NEUTRAL
        change = self.breaker.observe(health, plum_said(result.status_code, result.error), permit,
                                      time.monotonic(), self.clock())
        retry_after = result.retry_after_seconds
        if retry_after is not None and result.status_code in RETRY_AFTER_HOLDS:
            self.breaker.hold(min(retry_after, self.settings.submission.retry.max_retry_after_seconds),
                              time.monotonic(), self.clock())
            self.breaker_dirty = True
        if change is not None:
            self._breaker_moved(change)
        self._breaker_changed.set()
        plan = next_step(
            result.outcome, result.status_code, result.error, claim.counted_attempt, claim.contact_count,
            self.clock(), self.settings.submission.retry, self.rand, retry_after,
        )
        down = health is Health.DOWN and not self.breaker.counts_against_chunk()
        return during_outage(plan, result.status_code, result.error, self.breaker.since if down else None)

    def _breaker_moved(self, change: Change) -> None:
        self.breaker_dirty = True
        self.metrics.breaker_open.labels(account=self.account).set(int(change.opened))
        if change.opened:
            self.metrics.outages.labels(account=self.account).inc()
            outage = self.settings.submission.outage
            log.error("Plum account %s: circuit breaker OPEN after %d retryable failures in a row (last: %s); "
                      "no new requests: one probe at a time, the first in %g s, then waits doubling up to %g s; "
                      "failures meanwhile are not counted against max_tries", self.account,
                      self.breaker.failures_in_a_row, change.last_error, outage.initial_probe_interval_seconds,
                      outage.max_probe_interval_seconds)
        else:
            log.warning("Plum account %s: circuit breaker CLOSED: Plum answered again after %.1f s of outage "
                        "(since %s UTC, %d probes sent); sending resumes at %s requests/s", self.account,
                        change.outage_seconds, f"{change.since:%H:%M:%S}", change.probes,
                        self.settings.submission.rate_limit_per_second)

    async def save_breaker(self) -> None:
        """The breaker as admins see it (`campaign list`, plum_accounts), when it changed."""
        if not self.breaker_dirty:
            return
        self.breaker_dirty = False
        try:
            await self.repo.save_account(self.account, self.breaker.snapshot(time.monotonic()), self.worker,
                                         self.clock())
        except BaseException:
            self.breaker_dirty = True
            raise

    def _observe(self, result: SubmitResult) -> None:
        code = "none" if result.status_code is None else str(result.status_code)
        self.metrics.submissions.labels(outcome=result.outcome.value, status_code=code).inc()
        self.metrics.latency.observe(result.latency_seconds)

    def _log(self, claim: ClaimedChunk, result: SubmitResult, applied: NextStep | None,
             permit: Permit = Permit.NORMAL, written: bool = True) -> None:
        """What was stored: the step the ledger applied (none when another daemon owns the chunk
        now); ``written`` False: the daemon stopped first, the journal has the answer."""
        level = logging.INFO if result.outcome is Outcome.ACCEPTED else logging.WARNING
        if applied is None and written and result.outcome is Outcome.ACCEPTED:
            log.error("campaign %s chunk %s: Plum accepted this request after the chunk was taken from this "
                      "daemon (declared unknown, then resent and claimed again): its contacts may be called "
                      "twice; see `campaign show %s`", claim.campaign_id, claim.chunk_id, claim.campaign_id)
        if not submission_log.isEnabledFor(level):
            return  # (logging.level above INFO: the line is not built for every request)
        fields = {
            "campaign": claim.campaign_id, "chunk": claim.chunk_id, "attempt": claim.attempt,
            "probe": permit is Permit.PROBE,
            "status_code": result.status_code, "outcome": result.outcome.value,
            "next": (applied.step.value if applied is not None else "none (the chunk is no longer ours)" if written
                     else "not written yet: kept in the journal for the next start"),
            "latency_seconds": round(result.latency_seconds, 4), "contacts": claim.contact_count,
        }
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        if result.error and result.outcome is not Outcome.ACCEPTED:
            text += f" error={result.error!r}"
        submission_log.log(level, "submission %s", text, extra={"fields": fields | {"error": result.error}})
