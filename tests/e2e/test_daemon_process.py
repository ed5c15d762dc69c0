"""The daemon as a real process: kill -9, SIGTERM, SIGHUP, and two replicas on one PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from scheduler import db
from scheduler.repository import Repository
from tests.conftest import REPO_ROOT, _truncate_pg, repository_at
from tests.support.harness import campaign, e164, rows, simulator, valid_numbers, wait_for, write_contacts

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


def write_config(path: Path, db_url: str, base_url: str, worker: str | None, **overrides) -> Path:
    submission = {"chunk_size": 10, "max_concurrency": 4, "rate_limit_per_second": 40}
    submission.update(overrides)
    lines = [
        "database:", f"  url: {db_url}",
        "insight:", f"  base_url: {base_url}", "  developer_key: right-key", "  timeout_seconds: 5",
        "submission:", *[f"  {k}: {v}" for k, v in submission.items()],
        "  retry:", "    initial_backoff_seconds: 0.05", "    max_backoff_seconds: 0.2",
        "scheduler:", "  poll_interval_seconds: 0.2", "  shutdown_grace_seconds: 3",
    ]
    if worker is not None:  # unset: each process gets a unique id (the default)
        lines.append(f"  worker_id: {worker}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def start_daemon(config: Path, log_path: Path) -> asyncio.subprocess.Process:
    log = log_path.open("ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "--config", str(config), "run",
        cwd=config.parent, stdout=log, stderr=log,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}, "PYTHONPATH": str(REPO_ROOT)},
    )


@pytest.fixture
async def repo_for(db_url):
    async with repository_at(db_url) as repo:
        yield repo


async def test_kill_9_then_restart_never_queues_a_number_twice(repo_for, db_url, tmp_path):
    repo = repo_for
    numbers = valid_numbers(600)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator(latency_mean_seconds=0.15, latency_jitter_seconds=0.1) as sim:
        config = write_config(tmp_path / "config.yaml", db_url, sim.base_url, "solo")
        row = await repo.create_campaign(campaign(contacts))
        proc = await start_daemon(config, tmp_path / "daemon.log")
        while len(sim.requests) < 15:
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await start_daemon(config, tmp_path / "daemon.log")
        try:
            done = await wait_for(repo, row.id, FINAL, timeout=60)
        finally:
            proc.terminate()
            await proc.wait()
        stats = sim.stats()
    assert stats["numbers_queued_more_than_once"] == 0, stats
    queued = {p for (p,) in await rows(repo, "SELECT phone FROM contacts WHERE status = 'queued'")}
    unknown = {p for (p,) in await rows(repo, "SELECT phone FROM contacts WHERE status = 'unknown'")}
    assert queued | unknown == {e164(n) for n in numbers}  # every valid contact accounted for
    assert queued <= set(sim.queued_numbers) <= queued | unknown
    assert done.status in ("completed", "completed_with_errors")
    assert done.chunks_unknown == len(unknown) // 10
    print(f"kill -9: {len(unknown)} contacts in unknown chunks, {len(set(sim.queued_numbers) & unknown)} of them "
          f"really queued; {len(queued)} queued; duplicates {stats['numbers_queued_more_than_once']}")


async def test_sigterm_finishes_in_flight_requests_and_exits_0(repo_for, db_url, tmp_path):
    repo = repo_for
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(300))
    async with simulator(latency_mean_seconds=0.3) as sim:
        config = write_config(tmp_path / "config.yaml", db_url, sim.base_url, "term")
        await repo.create_campaign(campaign(contacts))
        proc = await start_daemon(config, tmp_path / "daemon.log")
        while len(sim.requests) < 6:
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
        started = len(sim.requests)
    assert code == 0
    assert await rows(repo, "SELECT id FROM submissions WHERE outcome = 'sending'") == []
    assert await rows(repo, "SELECT id FROM chunks WHERE status IN ('submitting', 'unknown')") == []
    recorded = await rows(repo, "SELECT count(*) FROM submissions")
    assert recorded[0][0] == started  # every request that started has its outcome


async def test_sighup_reloads_rate_and_refuses_a_broken_config(repo_for, db_url, tmp_path):
    repo = repo_for
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(400))
    async with simulator() as sim:
        config = write_config(tmp_path / "config.yaml", db_url, sim.base_url, "hup", rate_limit_per_second=2)
        row = await repo.create_campaign(campaign(contacts))
        proc = await start_daemon(config, tmp_path / "daemon.log")
        try:
            while len(sim.requests) < 2:
                await asyncio.sleep(0.05)
            good = config.read_text()
            config.write_text(good.replace("chunk_size: 10", "chunk_size: 0"))
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            assert proc.returncode is None
            config.write_text(good.replace("rate_limit_per_second: 2", "rate_limit_per_second: 40"))
            proc.send_signal(signal.SIGHUP)
            done = await wait_for(repo, row.id, FINAL, timeout=20)
        finally:
            proc.terminate()
            await proc.wait()
    log = (tmp_path / "daemon.log").read_text()
    assert "new configuration refused" in log and "submission.chunk_size: must be >= 1" in log
    assert "configuration reloaded" in log
    assert done.status == "completed"
    assert "right-key" not in log


async def test_two_daemons_on_one_postgresql_never_queue_a_number_twice(pg_url, tmp_path):
    await _truncate_pg(pg_url)
    db_url = pg_url
    engine = db.create_engine(pg_url)
    repo = Repository(engine)
    numbers = valid_numbers(900)
    files = [write_contacts(tmp_path / f"c{i}.csv", numbers[i * 300:(i + 1) * 300]) for i in range(3)]
    async with simulator(latency_mean_seconds=0.05, fail_rate=0.1) as sim:
        ids = [(await repo.create_campaign(campaign(f, name=f.name))).id for f in files]
        procs = []
        for worker in ("replica-a", "replica-b"):
            config = write_config(tmp_path / f"{worker}.yaml", db_url, sim.base_url, worker)
            procs.append(await start_daemon(config, tmp_path / f"{worker}.log"))
        try:
            for campaign_id in ids:
                assert (await wait_for(repo, campaign_id, FINAL, timeout=60)).status == "completed"
        finally:
            for proc in procs:
                proc.terminate()
            await asyncio.gather(*(p.wait() for p in procs))
    assert sim.stats()["numbers_queued_more_than_once"] == 0
    assert set(sim.queued_numbers) == {e164(n) for n in numbers}
    workers = dict(await rows(repo, "SELECT worker, count(*) FROM submissions GROUP BY worker"))
    await repo.close()
    assert set(workers) == {"replica-a", "replica-b"}  # both did real work


async def test_check_follows_the_daemon_heartbeat(repo_for, db_url, tmp_path):
    async with simulator() as sim:
        config = write_config(tmp_path / "config.yaml", db_url, sim.base_url, "checked")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}, "PYTHONPATH": str(REPO_ROOT)}

        async def check() -> int:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scheduler", "--config", str(config), "check", "--worker", "checked",
                env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            return await proc.wait()

        assert await check() == 1  # no daemon has ever ticked
        proc = await start_daemon(config, tmp_path / "daemon.log")
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while await check() != 0:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.2)
        finally:
            proc.terminate()
            await proc.wait()


async def test_two_daemons_with_default_ids_on_one_host_ingest_and_send_each_campaign_once(pg_url, tmp_path):
    """Issue 12 item 1: two daemons that both took the host name as their id both ingested one
    campaign; 5,000 of 12,000 contacts were never sent and nothing said so."""
    await _truncate_pg(pg_url)
    engine = db.create_engine(pg_url)
    repo = Repository(engine)
    numbers = valid_numbers(12_000, seed=12)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(contacts))
        procs = []
        for name in ("a", "b"):
            config = write_config(tmp_path / f"{name}.yaml", pg_url, sim.base_url, None, chunk_size=100,
                                  rate_limit_per_second=100)
            procs.append(await start_daemon(config, tmp_path / f"{name}.log"))
        try:
            done = await wait_for(repo, row.id, FINAL, timeout=90)
        finally:
            for proc in procs:
                proc.terminate()
            await asyncio.gather(*(p.wait() for p in procs))
        stats = sim.stats()
    await repo.close()
    assert done.status == "completed", done.last_error
    assert done.contacts_queued == 12_000
    assert stats["numbers_queued_more_than_once"] == 0
    assert set(sim.queued_numbers) == {e164(n) for n in numbers}
    logs = [(tmp_path / f"{name}.log").read_text() for name in ("a", "b")]
    assert sum(log.count(f"campaign {row.id}: ingesting") for log in logs) == 1, logs


async def test_a_configured_id_a_live_daemon_uses_is_refused_and_freed_by_its_death(repo_for, db_url, tmp_path):
    async with simulator() as sim:
        config = write_config(tmp_path / "config.yaml", db_url, sim.base_url, "dup")
        first = await start_daemon(config, tmp_path / "first.log")
        try:
            while await repo_for.last_tick("dup") is None:
                await asyncio.sleep(0.05)
            second = await start_daemon(config, tmp_path / "second.log")
            assert await asyncio.wait_for(second.wait(), 30) == 2
            refused = (tmp_path / "second.log").read_text()
            assert (f"error: scheduler.worker_id: 'dup' is in use by a live daemon (host {socket.gethostname()}, "
                    f"pid {first.pid}, last tick ") in refused
            assert "Traceback" not in refused
            first.send_signal(signal.SIGKILL)
            await first.wait()
            third = await start_daemon(config, tmp_path / "third.log")  # at once: its process is gone
            await asyncio.sleep(2.0)
            assert third.returncode is None, (tmp_path / "third.log").read_text()
            third.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(third.wait(), 20) == 0
        finally:
            for proc in (first,):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


async def test_kill_9_between_claims_at_a_low_rate_leaves_nothing_unknown(repo_for, db_url, tmp_path):
    """Issue 12 item 4: a chunk was claimed (and `sending` committed) a whole rate interval before
    its request left, so a kill in that interval left a never-sent chunk `unknown`."""
    repo = repo_for
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(100))
    async with simulator() as sim:
        config = write_config(tmp_path / "config.yaml", db_url, sim.base_url, "slow", rate_limit_per_second=0.5)
        await repo.create_campaign(campaign(contacts))
        proc = await start_daemon(config, tmp_path / "daemon.log")
        while len(sim.requests) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the 3rd request was answered; the 4th is due in ~1.7 s
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        sent = len(sim.requests)
    assert await rows(repo, "SELECT id FROM chunks WHERE status IN ('submitting', 'unknown')") == []
    assert (await rows(repo, "SELECT count(*) FROM submissions"))[0][0] == sent == 3
