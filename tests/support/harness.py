"""Runs the real daemon in the test's event loop against the simulator."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import socket
import sys
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import phonenumbers
from sqlalchemy import text

from scheduler.config import Settings
from scheduler.repository import NewCampaign, Repository
from scheduler.service import Daemon
from scheduler.simulator import InsightSimulator, SimulatorSettings

AREA_CODES = (212, 312, 415, 617, 303, 808, 702, 206)


def valid_numbers(count: int, seed: int = 1) -> list[str]:
    """Distinct national US numbers that phonenumbers judges valid."""
    rand = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        raw = f"{rand.choice(AREA_CODES)}{rand.randint(200, 999)}{rand.randint(0, 9999):04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(raw, "US")):
            found[raw] = None
    return list(found)


def e164(raw: str) -> str:
    return phonenumbers.format_number(phonenumbers.parse(raw, "US"), phonenumbers.PhoneNumberFormat.E164)


def write_contacts(path: Path, numbers: list[str], header: tuple[str, ...] = ("phone_number", "name")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, number in enumerate(numbers):
            writer.writerow([number, f"Zoë, \"{i}\""][: len(header)])
    return path


def settings_for(db_url: str, base_url: str, **submission) -> Settings:
    sub = dict(chunk_size=10, max_concurrency=4, rate_limit_per_second=50.0,
               retry=dict(max_tries=5, initial_backoff_seconds=0.05, max_backoff_seconds=0.2))
    sub.update(submission)
    return Settings.model_validate({
        "database": {"url": db_url},
        "insight": {"base_url": base_url, "developer_key": "right-key", "timeout_seconds": 3,
                    "connect_timeout_seconds": 1},
        "submission": sub,
        "scheduler": {"poll_interval_seconds": 0.2, "worker_id": "test-worker", "shutdown_grace_seconds": 2},
    })


def campaign(contacts: Path, **overrides) -> NewCampaign:
    now = datetime.now(timezone.utc)
    fields = dict(name="c", survey_id="77", instance_id="3", contacts_path=str(contacts),
                  start_at=now - timedelta(seconds=1), end_at=now + timedelta(hours=1))
    fields.update(overrides)
    return NewCampaign(**fields)


@asynccontextmanager
async def simulator(**settings):
    sim = InsightSimulator(SimulatorSettings(developer_key="right-key", seed=5, **settings))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@dataclass
class SimulatorProcess:
    """The simulator in a process of its own (``insight-scheduler simulate``), as Plum is: when
    requests arrive is then not delayed by the test's own event loop (which also polls the
    database), so per-second counts measure the daemons, not the test."""

    port: int
    proc: asyncio.subprocess.Process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
                return await response.json()

    async def stats(self) -> dict[str, Any]:
        return dict(await self._get("/_stats"))

    async def request_count(self) -> int:
        return int((await self.stats())["requests"])

    async def queued_numbers(self) -> Counter[str]:
        return Counter(n for r in await self._get("/_requests") if r["queued"] for n in r["numbers"])


def _ahead_of_the_daemons(pid: int) -> None:
    """Plum's servers are not starved of CPU by the daemons under test; on this 2-core machine
    the simulator would be, and a request it reads 10 ms late (the rate limit's margin) would
    count in the wrong second. So it runs at a higher priority where the test may set one."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, -10)
    except OSError:
        pass


@asynccontextmanager
async def simulator_process(**flags: float) -> AsyncIterator[SimulatorProcess]:
    """``simulator()`` in its own process; ``flags`` are ``simulate``'s options (latency_mean_seconds=0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = [item for name, value in flags.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "INSIGHT_DEVELOPER_KEY": "right-key"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "simulate", "--port", str(port), "--seed", "5", *options, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    _ahead_of_the_daemons(proc.pid)
    sim = SimulatorProcess(port, proc)
    try:
        for _ in range(300):
            try:
                await sim.stats()
                break
            except aiohttp.ClientError:
                if proc.returncode is not None:
                    raise AssertionError("the simulator process exited at start") from None
                await asyncio.sleep(0.05)
        yield sim
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@asynccontextmanager
async def running_daemon(settings: Settings, **options):
    daemon = Daemon(settings, handle_signals=False, **options)
    task = asyncio.get_running_loop().create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


async def wait_for(repo: Repository, campaign_id: int, statuses: set[str], timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await repo.get_campaign(campaign_id)
        if row.status in statuses:
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"campaign {campaign_id} stayed {row.status} ({row.last_error})")
        await asyncio.sleep(0.05)


async def scalar(repo: Repository, sql: str, **params):
    async with repo.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def rows(repo: Repository, sql: str, **params):
    async with repo.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).all()


async def execute(repo: Repository, sql: str, **params):
    async with repo.engine.begin() as conn:
        await conn.execute(text(sql), params)


async def claim_for_ingestion(repo: Repository, row, worker: str = "w"):
    """Take the campaign as the daemon's tick does (ingestion is fenced by this claim)."""
    now = datetime.now(timezone.utc)
    claimed = await repo.claim_campaign(row.id, worker, now, now + timedelta(minutes=5))
    assert claimed is not None
    return claimed
