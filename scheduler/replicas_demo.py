"""``insight-scheduler demo --replicas N``: N real daemon processes on one database, against
the simulator, sharing one Plum account's limits.

On PostgreSQL the demo makes a throw-away database on the server it is given (and drops it
afterwards), so no daemon of a real installation on that server ever sees the demo campaign;
without ``--database-url`` the daemons share a SQLite file in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from . import db, stored_files
from .demo import DEMO_KEY, FINAL, DemoOptions, generate_contacts
from .errors import DatabaseError, UserError
from .repository import NewCampaign, Repository
from .simulator import InsightSimulator, SimulatorSettings


async def run_replicas_demo(options: DemoOptions, replicas: int, database_url: str | None, console: Console) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="insight-replicas-"))
    try:
        url, drop = await _demo_database(database_url, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    sim = InsightSimulator(SimulatorSettings(developer_key=DEMO_KEY, fail_rate=options.fail_rate, seed=11,
                                             latency_mean_seconds=0.1, latency_jitter_seconds=0.05))
    procs: list[asyncio.subprocess.Process] = []
    try:
        base_url = await sim.start()
        engine = db.create_engine(url)
        await db.upgrade(engine)
        repo = Repository(engine)
        try:
            console.print(f"[bold]insight-scheduler demo[/]: {replicas} daemons, simulator at {base_url}, "
                          f"database {db.safe_url(url)}")
            campaign_id = await _create_campaign(repo, workdir, options)
            procs = [await _start(workdir, i, url, base_url, options) for i in range(replicas)]
            started = time.monotonic()
            status = await _follow(repo, campaign_id, procs, console)
            elapsed = time.monotonic() - started
            await _stop(procs)
            sent = await repo.requests_by_worker()
        finally:
            await repo.close()
        _report(status, sent, sim.stats(), elapsed, options, console)
        return 0 if status in ("completed", "completed_with_errors") else 1
    finally:
        await _stop(procs)
        await sim.stop()
        if drop is not None:
            await drop()
        if options.keep:
            console.print(f"kept: {workdir} (daemon logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _demo_database(database_url: str | None, workdir: Path) -> tuple[str, Any]:
    """(URL, how to drop it): a new database on the given PostgreSQL server, or a SQLite file."""
    if not database_url:
        return f"sqlite+aiosqlite:///{workdir / 'demo.db'}", None
    try:
        parsed = make_url(database_url)
    except Exception:  # noqa: BLE001 - sqlalchemy raises ArgumentError; any failure is the user's input
        raise UserError(f"--database-url: not a database URL: {database_url!r}") from None
    if parsed.drivername != "postgresql+asyncpg":
        # A SQLite file given here could be an installation's own: its campaigns would be sent
        # to the simulator and the demo's numbers to Plum. Without the flag the demo uses its own.
        raise UserError("--database-url: a PostgreSQL server as postgresql+asyncpg://user@host/db (the demo "
                        "creates its own database there); leave it out for a SQLite file of the demo's own")
    name = f"insight_demo_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - the driver's error, explained
        raise DatabaseError(f"--database-url: cannot create the demo's throw-away database on "
                            f"{db.safe_url(database_url)}: {getattr(exc, 'orig', exc)}; the user needs CREATEDB") \
            from None
    finally:
        await admin.dispose()

    async def drop() -> None:
        engine = create_async_engine(parsed, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            await engine.dispose()

    return parsed.set(database=name).render_as_string(hide_password=False), drop


async def _create_campaign(repo: Repository, workdir: Path, options: DemoOptions) -> int:
    contacts = generate_contacts(workdir / "contacts.csv", options.contacts)
    now = datetime.now(timezone.utc)
    row = await repo.create_campaign(NewCampaign(
        name="replicas demo", survey_id="1001", instance_id="1", contacts_path=str(contacts), start_at=now,
        end_at=now + timedelta(hours=2)), stored_files.pack(contacts))
    return row.id


async def _start(workdir: Path, index: int, url: str, base_url: str,
                 options: DemoOptions) -> asyncio.subprocess.Process:
    """One daemon process with the same configuration as the others (default worker id)."""
    home = workdir / f"daemon-{index + 1}"
    home.mkdir()
    (home / "config.yaml").write_text("\n".join([
        "database:", f"  url: {url}",
        "insight:", f"  base_url: {base_url}", f"  developer_key: {DEMO_KEY}", "  timeout_seconds: 10",
        "submission:", f"  chunk_size: {options.chunk_size}", f"  max_concurrency: {options.concurrency}",
        f"  rate_limit_per_second: {options.rate}",
        "scheduler:", "  poll_interval_seconds: 0.5", "  shutdown_grace_seconds: 5",
        "logging:", "  level: WARNING", ""]))
    log = (home / "daemon.log").open("ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "scheduler", "--config",
                                                str(home / "config.yaml"), "run", cwd=home, stdout=log,
                                                stderr=log, env=env)


async def _follow(repo: Repository, campaign_id: int, procs: list[asyncio.subprocess.Process],
                  console: Console) -> str:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        contacts = progress.add_task("contacts queued", total=None)
        while True:
            row = await repo.get_campaign(campaign_id)
            progress.update(contacts, completed=row.contacts_queued, total=row.contacts_valid or None)
            if row.status in FINAL:
                return row.status
            if all(p.returncode is not None for p in procs):
                raise UserError("every demo daemon exited; see their logs (run again with --keep)")
            await asyncio.sleep(0.25)


async def _stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(p.wait() for p in procs))


def _report(status: str, sent: dict[str, int], stats: dict[str, Any], elapsed: float, options: DemoOptions,
            console: Console) -> None:
    console.print(f"\ncampaign: [bold]{status}[/] in {elapsed:.1f} s")
    per_daemon = Table("daemon", "requests sent", title="requests per daemon")
    for worker, count in sorted(sent.items()):
        per_daemon.add_row(worker, str(count))
    console.print(per_daemon)
    span = (stats["last_request_at"] or 0) - (stats["first_request_at"] or 0)
    achieved = (stats["requests"] - 1) / span if stats["requests"] > 1 and span > 0 else 0.0
    account = Table("account-wide, at the simulator", "value", "limit (each daemon's config)")
    account.add_row("most requests started in any one second", str(stats["max_started_in_one_second"]),
                    f"{options.rate:g}")
    account.add_row("most requests in flight at once", str(stats["max_in_flight"]), str(options.concurrency))
    account.add_row("achieved rate", f"{achieved:.2f}/s", f"{options.rate:g}/s")
    account.add_row("numbers queued more than once", str(stats["numbers_queued_more_than_once"]), "0")
    console.print(account)
