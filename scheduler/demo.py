"""``insight-scheduler demo``: the real daemon against the simulator, on a throw-away SQLite file.

No config file and no network: the simulator listens on a free loopback
port, contacts are generated, and a live progress bar follows the database.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import random
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import db
from .config import Settings
from .reports import print_zones, zone_as_dict
from .repository import CampaignReport, NewCampaign, Repository
from .service import Daemon
from .simulator import InsightSimulator, SimulatorSettings

# Real US area codes; exchanges 200-999 make most generated numbers valid.
AREA_CODES = (212, 213, 303, 305, 312, 404, 415, 503, 512, 602, 617, 702, 808, 907, 206, 214, 615, 704)
FIRST_NAMES = ("Ann", "Bo", "Zoë", "José", "Mei", "Olu", "Priya", "Sam", "Chloé", "Håkon")
DEMO_KEY = "demo-developer-key"
FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


def generate_contacts(path: Path, count: int, seed: int = 7, bad_every: int = 397, repeat_every: int = 211) -> Path:
    """A realistic contacts CSV: extra columns, quotes and commas, a few bad and repeated numbers."""
    rand = random.Random(seed)
    previous = "2125550100"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["first_name", "phone_number", "account", "note"])
        for i in range(1, count + 1):
            number = f"{rand.choice(AREA_CODES)}{rand.randint(200, 999)}{rand.randint(0, 9999):04d}"
            if bad_every and i % bad_every == 0:
                number = rand.choice(["12345", "not a number", "", "+1 000 000 0000"])
            elif repeat_every and i % repeat_every == 0:
                number = previous
            previous = number if number else previous
            writer.writerow([rand.choice(FIRST_NAMES), number, f"A-{i:07d}", f'prefers "evenings", row {i}'])
    return path


@dataclass
class DemoOptions:
    contacts: int = 5000
    rate: float = 20.0
    fail_rate: float = 0.05
    chunk_size: int = 100
    concurrency: int = 4
    keep: bool = False
    callbacks: bool = False
    calling_window: str | None = None  # with it, contacts are called only in their local hours
    timezone_policy: str = "recipient"
    campaign_timezone: str | None = None
    console_port: int | None = None  # with it, the web console on this port, open until Ctrl-C


def demo_settings(db_url: str, base_url: str, options: DemoOptions, callback_port: int | None = None) -> Settings:
    console = {"listen": f"127.0.0.1:{options.console_port}"} if options.console_port else {}
    callbacks: dict[str, Any] = {}
    if callback_port is not None:
        callbacks = {"listen": f"127.0.0.1:{callback_port}", "public_url": f"http://127.0.0.1:{callback_port}",
                     "secret": "demo-callback-secret"}
    contacts = {"calling_window": options.calling_window, "timezone_policy": options.timezone_policy,
                "campaign_timezone": options.campaign_timezone}
    return Settings.model_validate({
        "callbacks": callbacks,
        "console": console,
        "contacts": contacts,
        "database": {"url": db_url},
        "insight": {"base_url": base_url, "developer_key": DEMO_KEY, "timeout_seconds": 10},
        "submission": {
            "chunk_size": options.chunk_size, "max_concurrency": options.concurrency,
            "rate_limit_per_second": options.rate,
            "retry": {"max_tries": 8, "initial_backoff_seconds": 0.2, "max_backoff_seconds": 2.0},
        },
        "scheduler": {"poll_interval_seconds": 0.5, "worker_id": "demo", "shutdown_grace_seconds": 5},
        "logging": {"level": "WARNING"},
    })


async def run_demo(options: DemoOptions, console: Console) -> int:
    # The progress bar and the report say what happened; per-request lines would bury them.
    logging.getLogger("scheduler").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="insight-demo-"))
    db_url = f"sqlite+aiosqlite:///{workdir / 'demo.db'}"
    sim = InsightSimulator(SimulatorSettings(developer_key=DEMO_KEY, fail_rate=options.fail_rate, seed=11,
                                             latency_mean_seconds=0.02, latency_jitter_seconds=0.01,
                                             callback_delay_seconds=0.2 if options.callbacks else None))
    base_url = await sim.start()
    engine = db.create_engine(db_url)
    repo = Repository(engine)
    try:
        await db.upgrade(engine)
        console.print(f"[bold]insight-scheduler demo[/]: simulator at {base_url}, database {workdir / 'demo.db'}")
        contacts = generate_contacts(workdir / "contacts.csv", options.contacts)
        now = datetime.now(timezone.utc)
        campaign = await repo.create_campaign(NewCampaign(
            name="demo survey", survey_id="1001", instance_id="1", contacts_path=str(contacts),
            # with calling windows, long enough for every zone's next window
            start_at=now, end_at=now + timedelta(hours=50 if options.calling_window else 2), max_attempts=2,
            reattempt_wait=600,
        ))
        started = time.monotonic()
        if options.console_port:
            await _console_user(repo, options.console_port, console)
        port = _free_port() if options.callbacks else None
        settings = demo_settings(db_url, base_url, options, port)
        report = await _run_daemon_with_progress(repo, campaign.id, settings, console, sim if port else None)
        elapsed = time.monotonic() - started
        print_demo_report(report, sim.stats(), elapsed, options, console)
        if report.zones:
            print_zones([zone_as_dict(zone) for zone in report.zones], console)
            waiting = sum(zone.by_status.get("pending", 0) for zone in report.zones)
            console.print(f"{waiting} chunk(s) wait for their zone's window ({options.calling_window} local, "
                          f"{options.timezone_policy} time); the demo stops here, a daemon would send them then.")
        if options.keep:
            console.print(f"kept: {workdir}\n  INSIGHT_SCHEDULER__DATABASE__URL={db_url} "
                          f"insight-scheduler campaign show {campaign.id}")
        waiting = report.campaign.status == "running" and bool(report.zones)
        return 0 if report.campaign.status in ("completed", "completed_with_errors") or waiting else 1
    finally:
        await repo.close()
        await sim.stop()
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _run_daemon_with_progress(repo: Repository, campaign_id: int, settings: Settings,
                                    console: Console, sim: InsightSimulator | None) -> CampaignReport:
    daemon = Daemon(settings, handle_signals=False)
    task = asyncio.get_running_loop().create_task(daemon.run())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            chunks = progress.add_task("chunks sent   ", total=None)
            contacts = progress.add_task("contacts queued", total=None)
            while True:
                waiting = bool(settings.contacts.calling_window) and await _only_future_windows(
                    repo, campaign_id, settings)
                row = await repo.get_campaign(campaign_id)
                done_chunks = row.chunks_total - row.chunks_pending
                progress.update(chunks, completed=done_chunks, total=row.chunks_total or None)
                progress.update(contacts, completed=row.contacts_queued, total=row.contacts_valid or None)
                if row.status in FINAL or task.done() or waiting:
                    break
                await asyncio.sleep(0.2)
            if sim is not None:
                await _await_call_results(repo, campaign_id, row.contacts_queued, progress)
        if settings.console.listen and not task.done():
            await _keep_console_open(settings.console.listen, console)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    return await repo.campaign_report(campaign_id)


DEMO_CONSOLE_USER = "admin"


async def _console_user(repo: Repository, port: int, console: Console) -> None:
    """A demo admin with a fresh random password, printed once with the console's URL."""
    import secrets

    from .console.passwords import hash_password

    password = secrets.token_urlsafe(12)
    await repo.add_user(DEMO_CONSOLE_USER, "admin", await asyncio.to_thread(hash_password, password),
                        datetime.now(timezone.utc))
    console.print(f"web console: http://127.0.0.1:{port}/console/  user {DEMO_CONSOLE_USER}  password {password}",
                  highlight=False, soft_wrap=True)


async def _keep_console_open(listen: str, console: Console) -> None:
    """The campaign is done; the console stays up for a look until Ctrl-C (or SIGTERM)."""
    import signal

    console.print(f"the campaign is final; the web console stays open at http://{listen}/console/ "
                  "until Ctrl-C", highlight=False, soft_wrap=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Kept until the loop closes: a second Ctrl-C while the daemon stops must not interrupt it.
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()


async def _only_future_windows(repo: Repository, campaign_id: int, settings: Settings) -> bool:
    """Everything sendable now is sent: what is left waits for a window that opens later."""
    report = await repo.campaign_report(campaign_id)
    if report.campaign.ingested_at is None:
        return False
    opens_by = datetime.now(timezone.utc) + timedelta(seconds=settings.scheduler.lead_seconds)
    for zone in report.zones:
        still_open = zone.by_status.get("pending", 0) + zone.by_status.get("submitting", 0)
        if still_open and (zone.window is None or zone.window[0] <= opens_by):
            return False
    return True


async def _await_call_results(repo: Repository, campaign_id: int, expected: int, progress: Progress) -> None:
    """Plum reports each call on result_url; the simulator does so shortly after queuing."""
    results = progress.add_task("call results   ", total=expected)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        received = sum(n for status, n in (await repo.call_results_by_status(campaign_id)).items())
        progress.update(results, completed=received)
        if received >= expected:
            return
        await asyncio.sleep(0.2)


def print_demo_report(report: CampaignReport, stats: dict[str, Any], elapsed: float, options: DemoOptions,
                      console: Console) -> None:
    row = report.campaign
    console.print(f"\ncampaign {row.id}: [bold]{row.status}[/]" + (f" ({row.last_error})" if row.last_error else ""))
    for title, counts in (("contacts by status", report.contacts_by_status),
                          ("chunks by status", report.chunks_by_status),
                          ("submissions by status code", report.submissions_by_code),
                          ("call results by status", report.call_results_by_status if options.callbacks else {})):
        if not counts:
            continue
        table = Table(title, "count")
        for key, value in sorted(counts.items()):
            table.add_row(str(key), str(value))
        console.print(table)
    span = (stats["last_request_at"] or 0) - (stats["first_request_at"] or 0)
    achieved = (stats["requests"] - 1) / span if stats["requests"] > 1 and span > 0 else 0.0
    summary = Table("measure", "value", title="run")
    summary.add_row("elapsed", f"{elapsed:.1f} s")
    summary.add_row("requests", str(stats["requests"]))
    summary.add_row("achieved rate / limit", f"{achieved:.2f}/s / {options.rate:.2f}/s = {achieved / options.rate:.3f}")
    summary.add_row("most requests started in one second", f"{stats['max_started_in_one_second']} (limit {options.rate:g})")
    summary.add_row("most requests in flight", f"{stats['max_in_flight']} (limit {options.concurrency})")
    summary.add_row("numbers queued more than once", str(stats["numbers_queued_more_than_once"]))
    console.print(summary)
