"""Several daemon processes on one database share the Plum account's limits: at most R
requests start in any second and at most max_concurrency are in flight at Plum, whatever
the number of daemons, with no burst when one joins or restarts; a daemon killed -9 is
taken over within 3 poll intervals. Every daemon gets the same config (default ids)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, _truncate_pg, repository_at
from tests.e2e.test_daemon_process import start_daemon, write_config
from tests.support.harness import (campaign, e164, rows, scalar, simulator, simulator_process, valid_numbers, wait_for,
                                   write_contacts)

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}
RATE, IN_FLIGHT = 20, 4


def config_for(tmp_path, name, db_url, base_url):
    return write_config(tmp_path / f"{name}.yaml", db_url, base_url, None, chunk_size=10,
                        rate_limit_per_second=RATE, max_concurrency=IN_FLIGHT)


async def stop_all(procs):
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    await asyncio.gather(*(p.wait() for p in procs))


async def workers_json(config) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "--config", str(config), "workers", "--json",
        stdout=asyncio.subprocess.PIPE, env={"PYTHONPATH": str(REPO_ROOT), "PATH": os.environ["PATH"]})
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode()


def account_wide(stats):
    return stats["max_started_in_one_second"], stats["max_in_flight"]


async def accounted(repo, numbers, sim) -> int:
    """Every valid contact queued or in an unknown chunk; nothing queued twice. Returns the unknown chunks."""
    assert (await sim.stats())["numbers_queued_more_than_once"] == 0
    queued = {p for (p,) in await rows(repo, "SELECT phone FROM contacts WHERE status = 'queued'")}
    unknown = {p for (p,) in await rows(repo, "SELECT phone FROM contacts WHERE status = 'unknown'")}
    assert queued | unknown == {e164(n) for n in numbers}
    assert queued <= set(await sim.queued_numbers()) <= queued | unknown
    return await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'unknown'")


@pytest.fixture
async def pg_repo(pg_url):
    await _truncate_pg(pg_url)
    async with repository_at(pg_url) as repo:
        yield repo


async def test_three_daemons_share_the_limits_and_one_killed_is_taken_over(pg_repo, pg_url, tmp_path):
    repo = pg_repo
    numbers = valid_numbers(3000, seed=3)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator_process(latency_mean_seconds=0.15, latency_jitter_seconds=0.05) as sim:
        row = await repo.create_campaign(campaign(contacts))
        procs = [await start_daemon(config_for(tmp_path, f"d{i}", pg_url, sim.base_url), tmp_path / f"d{i}.log")
                 for i in range(3)]
        try:
            while await sim.request_count() < 40:
                await asyncio.sleep(0.02)
            [(dead,)] = await rows(repo, "SELECT worker_id FROM workers WHERE pid = :pid", pid=procs[0].pid)
            procs[0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await procs[0].wait()
            while await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'submitting' AND lease_owner = :w",
                               w=dead):
                await asyncio.sleep(0.01)
            claims_released_after = time.monotonic() - killed_at
            await asyncio.sleep(1.0)
            listed = json.loads((await workers_json(tmp_path / "d1.yaml")))
            done = await wait_for(repo, row.id, FINAL, timeout=60)
        finally:
            await stop_all(procs)
        stats = await sim.stats()
        unknown = await accounted(repo, numbers, sim)
    states = {w["pid"]: w["state"] for w in listed}
    assert states == {procs[0].pid: "dead", procs[1].pid: "alive", procs[2].pid: "alive"}, listed
    assert all(w["host"] and w["version"] and w["started_at"] and w["last_tick_at"] for w in listed)
    assert sum(w["requests_last_minute"] for w in listed) >= 40
    per_second, in_flight = account_wide(stats)
    assert per_second <= RATE, stats
    assert in_flight <= IN_FLIGHT, stats
    assert unknown <= IN_FLIGHT
    assert done.status in ("completed", "completed_with_errors")
    # the dead daemon's claims were declared unknown within 3 poll intervals (0.2 s) and a tick,
    # not after their lease (insight.timeout_seconds + 60 s)
    assert claims_released_after <= 3 * 0.2 + 1.0
    workers = dict(await rows(repo, "SELECT worker, count(*) FROM submissions GROUP BY worker"))
    assert len(workers) == 3


async def test_a_daemon_joining_mid_run_adds_no_burst(pg_repo, pg_url, tmp_path):
    repo = pg_repo
    numbers = valid_numbers(1500, seed=4)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator_process(latency_mean_seconds=0.1) as sim:
        row = await repo.create_campaign(campaign(contacts))
        procs = [await start_daemon(config_for(tmp_path, "first", pg_url, sim.base_url), tmp_path / "first.log")]
        try:
            while await sim.request_count() < 30:
                await asyncio.sleep(0.02)
            for name in ("second", "third"):
                procs.append(await start_daemon(config_for(tmp_path, name, pg_url, sim.base_url),
                                                tmp_path / f"{name}.log"))
            done = await wait_for(repo, row.id, FINAL, timeout=60)
        finally:
            await stop_all(procs)
        stats = await sim.stats()
        assert await accounted(repo, numbers, sim) == 0
    assert done.status == "completed", done.last_error
    assert account_wide(stats)[0] <= RATE and account_wide(stats)[1] <= IN_FLIGHT, stats


async def test_a_daemon_restarted_at_once_after_kill_9_adds_no_burst(pg_repo, pg_url, tmp_path):
    repo = pg_repo
    numbers = valid_numbers(1500, seed=5)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator_process(latency_mean_seconds=0.1) as sim:
        row = await repo.create_campaign(campaign(contacts))
        config = config_for(tmp_path, "solo", pg_url, sim.base_url)
        procs = [await start_daemon(config, tmp_path / "solo.log")]
        try:
            while await sim.request_count() < 30:
                await asyncio.sleep(0.02)
            procs[0].send_signal(signal.SIGKILL)
            await procs[0].wait()
            procs.append(await start_daemon(config, tmp_path / "solo.log"))
            done = await wait_for(repo, row.id, FINAL, timeout=60)
        finally:
            await stop_all(procs)
        stats = await sim.stats()
        assert await accounted(repo, numbers, sim) <= IN_FLIGHT
    assert done.status in ("completed", "completed_with_errors")
    assert account_wide(stats)[0] <= RATE and account_wide(stats)[1] <= IN_FLIGHT, stats


async def test_a_daemon_killed_while_ingesting_is_taken_over_within_three_polls(pg_repo, pg_url, tmp_path):
    repo = pg_repo
    numbers = valid_numbers(60_000, seed=6)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(contacts))
        procs = [await start_daemon(write_config(tmp_path / f"i{i}.yaml", pg_url, sim.base_url, None, chunk_size=500,
                                                 rate_limit_per_second=50), tmp_path / f"i{i}.log")
                 for i in range(2)]
        try:
            while not await scalar(repo, "SELECT count(*) FROM contacts"):  # someone is ingesting
                await asyncio.sleep(0.01)
            [(owner,)] = await rows(repo, "SELECT lease_owner FROM campaigns")
            [(pid,)] = await rows(repo, "SELECT pid FROM workers WHERE worker_id = :w", w=owner)
            ingester = next(p for p in procs if p.pid == pid)
            ingester.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await ingester.wait()
            while True:  # the other daemon takes the campaign over
                [(now_owner,)] = await rows(repo, "SELECT lease_owner FROM campaigns")
                if now_owner not in (None, owner):
                    break
                await asyncio.sleep(0.01)
            taken_over_after = time.monotonic() - killed_at
            done = await wait_for(repo, row.id, FINAL, timeout=90)
        finally:
            await stop_all(procs)
    assert done.status == "completed", done.last_error
    assert taken_over_after <= 3 * 0.2 + 1.0  # 3 poll intervals, plus one tick's work
    assert await scalar(repo, "SELECT count(*) FROM contacts") == 60_000  # restarted cleanly, nothing twice
    assert sim.stats()["numbers_queued_more_than_once"] == 0
    assert set(sim.queued_numbers) == {e164(n) for n in numbers}
