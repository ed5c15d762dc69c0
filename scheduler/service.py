"""The daemon: an APScheduler tick that asks the database what to do, the
dispatcher that sends, signals, and a clean shutdown.

APScheduler only ticks (in-memory job store, this is the one module that
imports it); everything about a campaign lives in the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.exc import SQLAlchemyError

from . import campaign_review, db, identity, windows
from .config import Settings, load_settings
from .dispatcher import Dispatcher
from .journal import Journal, journal_path
from .outbox import DatabaseHealth, Outbox, replay, unreachable
from .errors import CampaignGone, ConfigError, DatabaseError, IngestionLost, NotFound, UserError
from .metrics import Metrics
from .ingest import ingest_campaign, recent_since, replan_window
from .insight import InsightClient
from .logs import SecretFilter, configure_logging
from .models import Campaign
from .phones import warm_up
from .repository import Repository, WindowMove, utcnow
from .ledger import FINAL_STATUSES
from .rules import status_problem
from .web import WebServer, tick_is_recent

if TYPE_CHECKING:
    from .console.app import ConsoleServer

log = logging.getLogger("scheduler.service")

MISFIRE_GRACE_SECONDS = 3600
GIL_SWITCH_INTERVAL_SECONDS = 0.001
# /readyz answers within this even when the database hangs (a partition rather than a refusal).
READINESS_DB_TIMEOUT_SECONDS = 5.0


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        secret_filter: SecretFilter | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.handle_signals = handle_signals
        self.config_path = config_path
        self.clock = clock
        self.worker = settings.scheduler.worker_id or identity.default_worker_id()
        self.secret_filter = secret_filter
        self.stopped = asyncio.Event()
        self.last_tick_at: datetime | None = None
        self._ingesting: dict[int, asyncio.Task[bool]] = {}
        self._learning: asyncio.Task[None] | None = None  # recent_calls learning from the ledger
        self._process_space = identity.process_space()
        self._seen_gone: set[str] = set()
        self._finished: set[int] = set()  # campaigns seen final this tick: their ledger is checked
        self.repo: Repository | None = None
        self.dispatcher: Dispatcher | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self.metrics = Metrics()
        self.web: WebServer | None = None
        self.console: ConsoleServer | None = None
        self.health = DatabaseHealth(clock)
        self.outbox: Outbox | None = None

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        engine = db.create_engine(self.settings.database.url, pool_size=self.settings.submission.max_concurrency + 4)
        try:
            await db.ensure_migrated(engine)
            self.repo = Repository(engine)
            async with InsightClient(
                self.settings.insight, max_concurrency=self.settings.submission.max_concurrency
            ) as client:
                await self._serve(client)
        finally:
            if self.repo is not None:
                await self.repo.close()
            await engine.dispose()
        return 0

    async def _serve(self, client: InsightClient) -> None:
        assert self.repo is not None
        warm_up(self.settings.contacts.default_region)
        # The ledger and ingestion threads run Python too; a shorter GIL switch
        # interval (default 5 ms) keeps them from delaying a request that is due
        # to leave, which the rate limit's margin would otherwise have to absorb.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
        await self._take_identity()
        await self._apply_journals()
        now = self.clock()
        dead = identity.dead_before(now, self.settings.scheduler.poll_interval_seconds)
        recovered = await self.repo.abandon_submitting(now, dead, also_dead={self.worker})
        if recovered:
            log.warning("%d chunk(s) were being sent when this daemon last stopped: marked unknown "
                        "(see `campaign show`, resend with `chunk resend`)", recovered)
        self.outbox = Outbox(self.repo, Journal.open(journal_path(self.settings), self.worker), self.health,
                             max_backoff_seconds=min(2.0, self.settings.scheduler.poll_interval_seconds / 2),
                             database=db.safe_url(self.settings.database.url))
        self.dispatcher = Dispatcher(self.repo, client, self.settings, self.worker, clock=self.clock,
                                     metrics=self.metrics, outbox=self.outbox)
        if self.settings.callbacks.listen:
            self.web = WebServer(self.repo, self.settings, self.metrics, self.readiness, self.plum_state)
            try:
                await self.web.start(self.settings.callbacks.listen)
            except OSError as exc:
                raise UserError(f"callbacks.listen: cannot listen on {self.settings.callbacks.listen}: "
                                f"{exc.strerror or exc}") from None
        await self._start_console()
        self._install_signals()
        self._start_scheduler()
        self._learn_recent_calls()
        sending = asyncio.get_running_loop().create_task(self.dispatcher.run())
        log.info("daemon %s started: polling every %ss, %s requests/s, %s in flight", self.worker,
                 self.settings.scheduler.poll_interval_seconds, self.settings.submission.rate_limit_per_second,
                 self.settings.submission.max_concurrency)
        try:
            await self.stopped.wait()
        finally:
            await self._shutdown(sending)

    async def _start_console(self) -> None:
        """The web console on its own listener (never the callback port Plum reaches)."""
        if not self.settings.console.listen:
            return
        from .console.app import ConsoleServer

        assert self.repo is not None
        self.console = ConsoleServer(self.repo, lambda: self.settings)
        try:
            await self.console.start(self.settings.console.listen)
        except OSError as exc:
            if self.web is not None:
                await self.web.stop()
            raise UserError(f"console.listen: cannot listen on {self.settings.console.listen}: "
                            f"{exc.strerror or exc}") from None

    async def _take_identity(self) -> None:
        """Refuse to run under an id a live daemon uses: two processes acting as one owner
        would both ingest and send the same campaign."""
        assert self.repo is not None
        now, host = self.clock(), socket.gethostname()
        holder = await self.repo.get_worker(self.worker)
        if holder is not None and holder.pid != os.getpid() and identity.holder_alive(
                holder, now, self.settings.scheduler.poll_interval_seconds, host):
            raise UserError(identity.id_in_use_message(self.worker, holder))
        await self.repo.register_worker(self.worker, now, host, os.getpid(), identity.package_version(),
                                        self._process_space)

    async def _apply_journals(self) -> None:
        """Answers a previous life could not write (the database was down when it stopped or was
        killed) go into the ledger before anything is claimed."""
        assert self.repo is not None
        base = journal_path(self.settings)
        applied = await replay(self.repo, base, db.safe_url(self.settings.database.url))
        if applied:
            log.warning("applied %d answer(s) from the journal %s before claiming anything", applied, base)

    def _start_scheduler(self) -> None:
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(
            self.tick, "interval", seconds=self.settings.scheduler.poll_interval_seconds,
            coalesce=True, max_instances=1, misfire_grace_time=MISFIRE_GRACE_SECONDS,
            next_run_time=datetime.now().astimezone(), id="tick",
        )
        self._scheduler.start()

    async def _shutdown(self, sending: asyncio.Task[None]) -> None:
        grace = self.settings.scheduler.shutdown_grace_seconds
        deadline = asyncio.get_running_loop().time() + grace
        assert self.dispatcher is not None
        self.dispatcher.halt()  # from here no request starts, not even one already claimed
        log.info("stopping: no new claims; waiting up to %ss for requests in flight", grace)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        stopping = asyncio.ensure_future(self.dispatcher.stop(grace))
        if self._tick_task is not None and not self._tick_task.done():
            await asyncio.wait({self._tick_task}, timeout=grace)
            self._tick_task.cancel()
        await asyncio.wait({stopping}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()) + 1.0)
        sending.cancel()
        tasks = [sending, *self._ingesting.values(), *([self._learning] if self._learning else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_outbox()
        if self.web is not None:
            await self.web.stop()
        if self.console is not None:
            await self.console.stop()
        await self._mark_stopped()
        log.info("stopped")

    def _close_outbox(self) -> None:
        if self.outbox is None:
            return
        journal = self.outbox.journal
        left = self.outbox.close()
        if left:
            log.error("%d answer(s) from Plum could not be written before stopping (database unreachable): "
                      "kept in the journal %s and written at the next start, before anything is claimed",
                      left, journal.path if journal else "-")

    async def _mark_stopped(self) -> None:
        assert self.repo is not None
        try:
            await self.repo.worker_stopped(self.worker, self.clock())
        except (DatabaseError, SQLAlchemyError, OSError) as exc:
            log.warning("could not record this daemon's stop (its id is free again after %s polls): %s",
                        identity.DEAD_AFTER_POLLS, exc)

    def request_stop(self) -> None:
        self.stopped.set()

    def _install_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass

    # -- SIGHUP ----------------------------------------------------------------

    def reload(self) -> None:
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: new configuration refused, keeping the old one: %s", exc)
            return
        self.apply_settings(settings)
        log.info("SIGHUP: configuration reloaded (rate %s/s, concurrency %s, chunk size %s)",
                 settings.submission.rate_limit_per_second, settings.submission.max_concurrency,
                 settings.submission.chunk_size)

    def apply_settings(self, settings: Settings) -> None:
        if settings.database.url != self.settings.database.url:
            log.warning("SIGHUP: database.url changes need a restart; keeping %s", db.safe_url(self.settings.database.url))
            settings = settings.model_copy(update={"database": self.settings.database})
        cap_raised = settings.contacts.min_hours_between_calls > self.settings.contacts.min_hours_between_calls
        self.settings = settings
        if self.secret_filter is not None:
            configure_logging(settings, self.secret_filter)
        if self.dispatcher is not None:
            self.dispatcher.reconfigure(settings)
            if cap_raised:
                self._learn_recent_calls()

    # -- the tick ----------------------------------------------------------------

    async def tick(self) -> None:
        """Ask the database what is due and what changed; never raise."""
        self._tick_task = asyncio.current_task()
        try:
            await self._tick()
        except asyncio.CancelledError:
            # Only a shutdown cancels a tick; the next daemon's tick redoes its work.
            log.info("tick interrupted by shutdown")
        except (DatabaseError, SQLAlchemyError, OSError) as exc:
            if unreachable(exc):
                self.health.failed(exc, "tick")
            else:
                log.error("tick: database problem, trying again next tick: %s", exc)
        except Exception:  # noqa: BLE001 - the loop must survive anything
            log.exception("tick failed")

    async def _tick(self) -> None:
        assert self.repo is not None and self.dispatcher is not None
        now = self.clock()
        await self.repo.heartbeat(self.worker, now)
        self.health.ok()
        await self._review_campaigns(now)
        dead_before = identity.dead_before(now, self.settings.scheduler.poll_interval_seconds)
        await self.repo.abandon_submitting(now, dead_before, await self._killed_here(dead_before))
        await self.dispatcher.save_breaker()
        await self.repo.housekeeping(now, self.dispatcher.breaker.since)
        await self._verify_finished()
        await self._roll_windows(now)
        lease_until = now + timedelta(seconds=self.settings.scheduler.lease_seconds)
        for campaign in await self.repo.campaigns_to_start(now, self.worker):
            if campaign.id in self._ingesting:
                continue
            claimed = await self.repo.claim_campaign(campaign.id, self.worker, now, lease_until)
            if claimed is not None and claimed.ingested_at is None:
                self._start_ingestion(claimed)
            elif claimed is not None:
                log.info("campaign %s running", claimed.id)
        self.last_tick_at = now
        self.dispatcher.wake()
        await self._update_metrics(now)

    async def _killed_here(self, dead_before: datetime) -> list[str]:
        """Daemons in this pid space whose process is gone: their claims need not wait 3 polls."""
        assert self.repo is not None
        if self._process_space is None:
            return []
        rows = await self.repo.workers_in_space(self._process_space, dead_before)
        gone = identity.gone_at_once(rows, self._process_space, self.worker)
        for worker in set(gone) - self._seen_gone:
            log.warning("daemon %s on this host is gone (its process ended without stopping): its requests in "
                        "flight become unknown now, its ingestion is restarted", worker)
        self._seen_gone |= set(gone)
        return gone

    def _learn_recent_calls(self) -> None:
        """Answers write ``recent_calls`` only while the frequency cap is on (it cost more than
        the rest of an answer's bookkeeping). So when the cap comes on (at start, or a SIGHUP
        that raises it) claims wait until the table has learnt from the ledger every number
        queued within the cap's hours."""
        assert self.dispatcher is not None
        if recent_since(self.settings, self.clock()) is None:
            return
        self.dispatcher.hold_claims()
        if self._learning is not None:
            self._learning.cancel()
        self._learning = asyncio.get_running_loop().create_task(self._learn_then_claim())

    async def _learn_then_claim(self) -> None:
        assert self.repo is not None and self.dispatcher is not None and self.outbox is not None
        await self.outbox.settled()  # answers written under the old setting are in the ledger first
        while True:
            since = recent_since(self.settings, self.clock())
            if since is None:
                break
            try:
                offered = await self.repo.remember_recent_calls(since)
            except (DatabaseError, SQLAlchemyError, OSError) as exc:
                self.health.failed(exc, "learning the calls within contacts.min_hours_between_calls")
                await asyncio.sleep(self.settings.scheduler.poll_interval_seconds)
                continue
            log.info("frequency cap on (%s h): %d number(s) queued within it learnt from the ledger before "
                     "any claim", self.settings.contacts.min_hours_between_calls, offered)
            break
        self.dispatcher.open_claims()

    async def _review_campaigns(self, now: datetime) -> None:
        """What admins did since the last tick, each logged once by one daemon: deleted rows,
        status changes, unknown statuses, rows the daemon cannot use (failed, naming the value)."""
        assert self.repo is not None
        for gone in await self.repo.take_deletions(now):
            log.warning("%s", campaign_review.deletion_message(gone))
        for row in await self.repo.campaigns_to_review():
            try:
                await self._review(row, now)
            except (DatabaseError, SQLAlchemyError, OSError):
                raise
            except Exception:  # noqa: BLE001 - one row must never stop the others
                log.exception("campaign %s: could not be checked", row.id)

    async def _review(self, row: Campaign, now: datetime) -> None:
        assert self.repo is not None
        unknown = status_problem(row.status)
        if unknown:
            if await self.repo.flag_campaign(row.id, unknown):
                log.warning("campaign %s (%s): %s; it is left alone until its status is fixed", row.id, row.name,
                            unknown)
            return
        if row.status != row.status_seen and await self.repo.see_status(row.id, row.status_seen, row.status):
            log.info("%s", campaign_review.status_message(row))
            if row.status in FINAL_STATUSES:
                self._finished.add(row.id)
        problems = campaign_review.problems(row, self.settings, now)
        if problems:
            error = "invalid campaign row: " + "; ".join(problems)
            await self.repo.fail_campaign(row.id, error, now)
            log.warning("campaign %s (%s) failed: %s", row.id, row.name, error)

    async def _verify_finished(self) -> None:
        """A campaign that became final must add up (scheduler/verify.py); if it does not, the
        admin reads why in last_error and the log, never a quiet completed_with_errors."""
        assert self.repo is not None
        finished, self._finished = self._finished, set()
        for campaign_id in sorted(finished):
            try:
                problems = await self.repo.verify_campaign(campaign_id)
            except NotFound:  # deleted since
                continue
            if problems:
                text = "the ledger does not add up (run `campaign verify`): " + "; ".join(problems)
                log.error("campaign %s: %s", campaign_id, text)
                await self.repo.flag_campaign(campaign_id, text)

    async def _roll_windows(self, now: datetime) -> None:
        """Unsent chunks follow their rule: a window that closed unsent moves to the next one
        (or runs out), and an admin's edit of the window columns or config applies at once."""
        assert self.repo is not None
        moves: list[WindowMove] = []
        planned: dict[tuple[Any, ...], windows.Interval | None] = {}  # chunks of one zone set share a window
        for chunk in await self.repo.unsent_windows():
            current = (chunk.window_start_at, chunk.window_end_at)
            key = (chunk.timezones, chunk.calling_window_start, chunk.calling_window_end, chunk.excluded_weekdays,
                   chunk.start_at, chunk.end_at)
            try:
                if key not in planned:
                    planned[key] = replan_window(chunk, self.settings, now)
                change = windows.window_change(current, planned[key], now)
            except (ValueError, TypeError) as exc:  # the review fails such a row within this tick
                log.error("campaign %s: chunk %s keeps its window: the campaign's calling window columns or times "
                          "are invalid: %s", chunk.campaign_id, chunk.chunk_id, exc)
                continue
            if change != windows.KEEP:
                moves.append(WindowMove(chunk.chunk_id, current, change))  # type: ignore[arg-type]
        if moves:
            await self.repo.move_windows(moves, now, self.dispatcher.breaker.since if self.dispatcher else None)
            log.info("calling windows: %d chunk(s) moved to a new window, %d with none left",
                     sum(m.new is not None for m in moves), sum(m.new is None for m in moves))

    async def _update_metrics(self, now: datetime) -> None:
        assert self.repo is not None and self.dispatcher is not None
        chunks, contacts, campaigns = await self.repo.status_counts()
        self.metrics.set_counts(self.metrics.chunks, chunks)
        self.metrics.set_counts(self.metrics.contacts, contacts)
        self.metrics.set_counts(self.metrics.campaigns, campaigns)
        self.metrics.limiter_wait.set(self.dispatcher.limiter.waited_seconds)
        self.metrics.unwritten.set(self.dispatcher.outbox.waiting)
        self.metrics.last_tick.set(now.timestamp())

    async def readiness(self) -> list[str]:
        """What keeps this daemon from being ready: [] when the database answers,
        the scheduler runs and the last tick is recent."""
        problems = []
        if self._scheduler is None or not self._scheduler.running:
            problems.append("scheduler not running")
        try:
            assert self.repo is not None
            await asyncio.wait_for(self.repo.last_tick(self.worker), READINESS_DB_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            problems.append(f"database unreachable: no answer within {READINESS_DB_TIMEOUT_SECONDS:g} s")
        except (DatabaseError, SQLAlchemyError, OSError) as exc:
            problems.append(f"database unreachable: {exc}")
        if not tick_is_recent(self.last_tick_at, self.clock(), self.settings.scheduler.poll_interval_seconds):
            problems.append(f"last tick {self.last_tick_at or 'never'} is too old")
        return problems

    def plum_state(self) -> dict[str, object]:
        """For /readyz: the account's breaker and answers waiting for the database (the daemon is
        healthy while Plum is down: that is Plum's state, not a reason to restart it)."""
        if self.dispatcher is None:
            return {}
        snapshot = self.dispatcher.breaker.snapshot(time.monotonic())
        return {"plum": "waiting" if snapshot.open else "accepting", "plum_state": snapshot.describe(),
                "answers_waiting_for_database": self.dispatcher.outbox.waiting}

    def _start_ingestion(self, campaign: Campaign) -> None:
        assert self.repo is not None
        log.info("campaign %s: ingesting %s", campaign.id, campaign.contacts_path)
        task = asyncio.get_running_loop().create_task(
            ingest_campaign(self.repo, campaign, self.settings, self.worker, self.clock)
        )
        self._ingesting[campaign.id] = task
        task.add_done_callback(functools.partial(self._ingested, campaign.id))

    def _ingested(self, campaign_id: int, task: asyncio.Task[bool]) -> None:
        self._ingesting.pop(campaign_id, None)
        if task.cancelled():
            return
        if isinstance(task.exception(), CampaignGone):
            log.warning("campaign %s: deleted while its contacts were being read; ingestion stopped", campaign_id)
            return
        if isinstance(task.exception(), IngestionLost):
            log.warning("campaign %s: another daemon took over its ingestion (this one missed its heartbeats); "
                        "this one stopped ingesting it: %s", campaign_id, task.exception())
            return
        if task.exception() is not None and unreachable(task.exception()):  # type: ignore[arg-type]
            self.health.failed(task.exception(), f"ingesting campaign {campaign_id}")  # type: ignore[arg-type]
            log.warning("campaign %s: ingestion stopped: the database is unreachable; it restarts from the "
                        "start at the first tick after the database is back", campaign_id)
            return
        if task.exception() is not None:
            log.error("campaign %s: ingestion failed unexpectedly", campaign_id, exc_info=task.exception())
            return
        if self.dispatcher is not None:
            self.dispatcher.wake()
