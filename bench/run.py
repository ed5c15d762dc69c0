"""Benchmarks: measures us against the limits, all traffic on loopback.

    python bench/run.py            # every row (about 7 1/2 minutes on 2 cores; rows 9 and 10 together
                                   # take about 2 1/4: a 90 s Plum outage, a 10 s PostgreSQL one;
                                   # rows 3 and 11 use the server at INSIGHT_BENCH_PG_URL, row 10 a
                                   # throw-away cluster of its own)
    BENCH_DEBUG=1 python bench/run.py --only 11   # + where each request's in-flight place went (stderr)
    BENCH_DEBUG=1 python bench/run.py --only 12   # + the daemon's CPU per request by thread (stderr)
    BENCH_PROFILE=DIR python bench/run.py --only 12   # + a py-spy profile of each daemon, in DIR
                                                      # (BENCH_PROFILE_FLAGS="" samples every running
                                                      #  thread, not only the one holding the GIL;
                                                      #  BENCH_PROFILE_RATE=1000: samples a second)
    python bench/run.py --quick    # smaller sizes, for a smoke run
    python bench/run.py --only 1,2 # some rows

Prints one markdown table. Every ratio is measured within one run, against
the configured limit or against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import phonenumbers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler import db, stored_files  # noqa: E402
from scheduler.config import Settings  # noqa: E402
from scheduler.demo import generate_contacts  # noqa: E402
from scheduler.ingest import ingest_campaign  # noqa: E402
from scheduler.repository import NewCampaign, Repository  # noqa: E402
from scheduler.service import Daemon  # noqa: E402

KEY = "bench-key"
PG_ADMIN = os.environ.get("INSIGHT_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


@dataclass
class Row:
    name: str
    measured: str
    baseline: str
    ratio: str
    goal: str
    met: str


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def settings(db_url: str, base_url: str, **submission) -> Settings:
    sub = {"chunk_size": 10, "max_concurrency": 16, "rate_limit_per_second": 50.0,
           "retry": {"max_tries": 5, "initial_backoff_seconds": 0.1, "max_backoff_seconds": 1.0}}
    sub.update(submission)
    return Settings.model_validate({
        "database": {"url": db_url},
        "insight": {"base_url": base_url, "developer_key": KEY, "timeout_seconds": 30},
        "submission": sub,
        "scheduler": {"poll_interval_seconds": 0.5, "worker_id": "bench", "shutdown_grace_seconds": 5},
        "logging": {"level": "ERROR"},
    })


async def fresh_sqlite(workdir: Path) -> str:
    url = f"sqlite+aiosqlite:///{workdir / f'{uuid.uuid4().hex[:8]}.db'}"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    await engine.dispose()
    return url


async def fresh_postgres() -> str:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"insight_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    await engine.dispose()
    return url


async def drop_postgres(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    await admin.dispose()


async def run_campaign(db_url: str, contacts: Path, cfg: Settings,
                       start_at: datetime | None = None, timeout: float = 600) -> tuple[float, object]:
    """Create a campaign, run the real daemon until it is final; wall seconds and the row."""
    engine = db.create_engine(db_url)
    repo = Repository(engine)
    now = utcnow()
    row = await repo.create_campaign(NewCampaign(
        name="bench", survey_id="1", instance_id="1", contacts_path=str(contacts),
        start_at=start_at or now, end_at=now + timedelta(hours=3)))
    daemon = Daemon(cfg, handle_signals=False)
    started = time.monotonic()
    task = asyncio.get_running_loop().create_task(daemon.run())
    try:
        while True:
            current = await repo.get_campaign(row.id)
            if current.status in FINAL:
                break
            if time.monotonic() - started > timeout or task.done():
                raise RuntimeError(f"campaign did not finish: {current.status} {current.last_error}")
            await asyncio.sleep(0.05)
        wall = time.monotonic() - started
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
        await engine.dispose()
    return wall, current


class SimProcess:
    """The simulator in its own process, as Plum would be: it does not share our CPU core."""

    def __init__(self, *flags: str) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "INSIGHT_DEVELOPER_KEY": KEY}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "simulate", "--port", str(self.port), *flags],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.mkdtemp())
        self.base_url = f"http://127.0.0.1:{self.port}/api"

    async def __aenter__(self) -> "SimProcess":
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.stats()
                return self
            except aiohttp.ClientError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("simulator did not start")
                await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    async def stats(self) -> dict:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}/_stats") as response:
                return await response.json()

    async def request_times(self) -> list[float]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}/_requests") as response:
                return sorted(r["started"] for r in await response.json())

    async def requests(self) -> list[dict]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}/_requests") as response:
                return await response.json()

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{self.port}/_reset") as response:
                await response.read()


def achieved_rate(stats: dict) -> float:
    span = stats["last_request_at"] - stats["first_request_at"]
    return (stats["requests"] - 1) / span if span > 0 else 0.0


# -- 1. rate fidelity ---------------------------------------------------------------


async def rate_fidelity(workdir: Path, rates: list[int], seconds: float) -> list[Row]:
    rows = []
    for rate in rates:
        requests = int(rate * seconds)
        contacts = generate_contacts(workdir / f"rate{rate}.csv", requests * 10, bad_every=0, repeat_every=0)
        async with SimProcess() as sim:
            url = await fresh_sqlite(workdir)
            await run_campaign(url, contacts, settings(url, sim.base_url, rate_limit_per_second=rate,
                                                       max_concurrency=16))
            stats = await sim.stats()
        achieved = achieved_rate(stats)
        worst = stats["max_started_in_one_second"]
        ok = achieved / rate >= 0.98 and worst <= rate
        rows.append(Row(f"1. rate fidelity, R={rate}/s ({stats['requests']} requests)",
                        f"{achieved:.2f}/s; max {worst} in any 1 s", f"R = {rate}/s",
                        f"{achieved / rate:.3f}", ">= 0.98 and max <= R", "yes" if ok else "no"))
    return rows


# -- 2. latency-bound throughput -----------------------------------------------------


# Issue 15's goals: N=16 >= 0.90 of N/L; N=64 >= 0.60 (one event loop's CPU is the limit there).
LATENCY_BOUND_GOALS = {64: 0.60}


async def latency_bound(workdir: Path, concurrencies: list[int], per_slot: int) -> list[Row]:
    rows = []
    latency = 0.1
    for n in concurrencies:
        requests = n * per_slot
        contacts = generate_contacts(workdir / f"lat{n}.csv", requests * 10, bad_every=0, repeat_every=0)
        async with SimProcess("--latency-mean-seconds", str(latency)) as sim:
            url = await fresh_sqlite(workdir)
            await run_campaign(url, contacts, settings(url, sim.base_url, rate_limit_per_second=5000,
                                                       max_concurrency=n))
            stats = await sim.stats()
        ideal = n / latency
        achieved = achieved_rate(stats)
        goal = LATENCY_BOUND_GOALS.get(n, 0.90)
        rows.append(Row(f"2. latency-bound, N={n}, 100 ms ({stats['requests']} requests)",
                        f"{achieved:.1f}/s (max {stats['max_in_flight']} in flight)", f"N/latency = {ideal:.0f}/s",
                        f"{achieved / ideal:.3f}", f">= {goal:.2f}", "yes" if achieved / ideal >= goal else "no"))
    return rows


# -- 3. ingestion at scale -------------------------------------------------------------


def naive_floor(path: Path) -> float:
    started = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            try:
                number = phonenumbers.parse(row[1], "US")
                if phonenumbers.is_valid_number(number):
                    phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            except phonenumbers.NumberParseException:
                pass
    return time.perf_counter() - started


async def create_stored(path: Path, db_url: str) -> tuple[int, dict]:
    """What `campaign create --contacts FILE` does (in the admin's CLI process, not the daemon's):
    the file packed (zlib, SHA-256) and stored with the campaign. Its id and the CLI's timings."""
    started = time.perf_counter()
    packed = await asyncio.to_thread(stored_files.pack, path)
    pack_seconds = time.perf_counter() - started
    engine = db.create_engine(db_url)
    repo = Repository(engine)
    now = utcnow()
    started = time.perf_counter()
    # three days: with calling windows every zone has a window before end_at
    row = await repo.create_campaign(NewCampaign("bench", "1", "1", str(path), now, now + timedelta(days=3)), packed)
    create_seconds = time.perf_counter() - started
    await repo.close()
    return row.id, {"pack_seconds": pack_seconds, "create_seconds": create_seconds,
                    "file_mb": packed.size_bytes / 1e6, "packed_mb": len(packed.data) / 1e6}


async def ingest_once(campaign_id: int, db_url: str, calling_window: str | None = None) -> dict:
    """Runs in a fresh process (see --ingest-one) so peak RSS is this ingestion's alone."""
    from scheduler.phones import warm_up

    warm_up("US")  # as the daemon does at start-up
    # Did ingestion read the copy stored in the database (scheduler/ingest.py contacts_source)?
    unpacked: list[float] = []
    unpack = stored_files.unpack

    def counted_unpack(*args: object, **kwargs: object) -> Path:
        started = time.perf_counter()
        try:
            return unpack(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            unpacked.append(time.perf_counter() - started)

    stored_files.unpack = counted_unpack  # type: ignore[assignment]
    engine = db.create_engine(db_url)
    repo = Repository(engine)
    now = utcnow()
    # ingestion is fenced by the campaign's claim, as the daemon's tick takes it
    row = await repo.claim_campaign(campaign_id, "bench", now, now + timedelta(hours=1))
    stall = 0.0
    done = asyncio.Event()

    async def watch_loop() -> None:
        nonlocal stall
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            stall = max(stall, time.perf_counter() - before - 0.005)

    watcher = asyncio.get_running_loop().create_task(watch_loop())
    started = time.perf_counter()
    cfg = Settings.model_validate({"contacts": {"calling_window": calling_window}})
    ok = await ingest_campaign(repo, row, cfg, "bench", utcnow)
    seconds = time.perf_counter() - started
    done.set()
    await watcher
    current = await repo.get_campaign(row.id)
    report = await repo.campaign_report(row.id)
    await repo.close()
    return {
        "ok": ok, "seconds": seconds, "contacts": current.contacts_total, "chunks": current.chunks_total,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "stall_ms": stall * 1000, "zone_sets": len(report.zones),
        "out_of_window": report.contacts_by_status.get("out_of_window", 0),
        "read_stored": len(unpacked) == 1, "unpack_seconds": sum(unpacked),
    }


async def ingest_in_subprocess(path: Path, db_url: str, calling_window: str = "") -> dict:
    """The campaign created as admins do (file stored), then ingested in a fresh process."""
    campaign_id, cli = await create_stored(path, db_url)
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, __file__, "--ingest-one", str(campaign_id), db_url, calling_window],
        capture_output=True, text=True, check=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), **cli}


def stored_note(result: dict) -> str:
    """The CLI's part (not ingestion's) and where ingestion read the contacts from."""
    source = (f"ingestion read the stored copy (unpack {result['unpack_seconds']:.2f} s, inside the ingestion time)"
              if result["read_stored"] else "ingestion did NOT read the stored copy")
    return (f"; campaign create: pack {result['pack_seconds']:.2f} s ({result['file_mb']:.1f} MB -> "
            f"{result['packed_mb']:.1f} MB) + insert {result['create_seconds']:.2f} s (CLI, not in the time); "
            f"{source}")


async def ingestion(workdir: Path, sizes: list[int]) -> tuple[list[Row], dict[int, float]]:
    rows, sqlite_seconds = [], {}
    for size in sizes:
        path = generate_contacts(workdir / f"ingest{size}.csv", size)
        floor = naive_floor(path)
        for kind in ("sqlite", "postgresql"):
            url = await (fresh_sqlite(workdir) if kind == "sqlite" else fresh_postgres())
            try:
                result = await ingest_in_subprocess(path, url)
            finally:
                if kind == "postgresql":
                    await drop_postgres(url)
            if kind == "sqlite":
                sqlite_seconds[size] = result["seconds"]
            rss = max(result["rss_mb"], result["worker_rss_mb"])
            goal_ok = (result["stall_ms"] <= 100 and rss <= 300 and (size < 1_000_000 or result["seconds"] <= 15)
                       and result["read_stored"])
            rows.append(Row(
                f"3. ingest {size:,} contacts, {kind}",
                f"{result['seconds']:.2f} s, {result['seconds'] / size * 1e6:.1f} µs/contact, peak RSS "
                f"{result['rss_mb']:.0f} MB (+ parser process {result['worker_rss_mb']:.0f} MB), "
                f"max loop stall {result['stall_ms']:.0f} ms{stored_note(result)}",
                f"naive floor {floor:.2f} s ({floor / size * 1e6:.1f} µs/contact)",
                f"{floor / result['seconds']:.2f}x faster than the floor",
                "1M <= 15 s, RSS <= 300 MB, stall <= 100 ms", "yes" if goal_ok else "no"))
    return rows, sqlite_seconds


async def ingestion_with_windows(workdir: Path, size: int) -> Row:
    """The same file with and without calling windows (US rule, recipient zones), SQLite, one run."""
    path = workdir / f"ingest{size}.csv"
    if not path.exists():
        generate_contacts(path, size)
    results: dict[str, list[dict]] = {"": [], "08:00-21:00": []}
    for window in ("", "08:00-21:00", "08:00-21:00", ""):  # interleaved, best of two: the machine is noisy
        url = await fresh_sqlite(workdir)
        results[window].append(await ingest_in_subprocess(path, url, window))
    off, on = (min(results[w], key=lambda r: r["seconds"]) for w in ("", "08:00-21:00"))
    rss = max(on["rss_mb"], on["worker_rss_mb"])
    ok = (on["stall_ms"] <= 100 and rss <= 300 and on["seconds"] <= 1.10 * off["seconds"]
          and on["read_stored"] and off["read_stored"])
    return Row(
        f"8. ingest {size:,} contacts with calling windows (08:00-21:00, recipient zones), sqlite",
        f"{on['seconds']:.2f} s, {on['chunks']} chunks over {on['zone_sets']} zone sets, "
        f"{on['out_of_window']} out_of_window, peak RSS {on['rss_mb']:.0f} MB (+ parser {on['worker_rss_mb']:.0f} MB), "
        f"max loop stall {on['stall_ms']:.0f} ms{stored_note(on)}",
        f"windows off, same run: {off['seconds']:.2f} s, {off['chunks']} chunks (each the best of two; "
        f"{'stored copy read' if off['read_stored'] else 'stored copy NOT read'})",
        f"{on['seconds'] / off['seconds']:.2f}x the time without windows",
        "<= 1.10x without windows, RSS <= 300 MB, stall <= 100 ms", "yes" if ok else "no")


# -- 4. end to end ------------------------------------------------------------------------


async def end_to_end(workdir: Path, size: int, rate: float, ingest_seconds: float | None) -> Row:
    path = workdir / f"ingest{size}.csv"
    if not path.exists():
        generate_contacts(path, size)
    async with SimProcess() as sim:
        url = await fresh_sqlite(workdir)
        wall, row = await run_campaign(url, path, settings(url, sim.base_url, chunk_size=1000,
                                                           rate_limit_per_second=rate, max_concurrency=8))
        stats = await sim.stats()
    sending = row.chunks_total / rate
    ideal = sending + (ingest_seconds or 0.0)
    return Row(f"4. end to end, {size:,} contacts, chunk 1000, {rate:g}/s",
               f"{wall:.1f} s wall ({stats['requests']} requests, {row.contacts_queued:,} queued, "
               f"{stats['numbers_queued_more_than_once']} twice)",
               f"ideal {ideal:.1f} s ({sending:.0f} s sending + {ingest_seconds or 0:.1f} s ingestion)",
               f"{wall / ideal:.3f}", "<= 1.10", "yes" if wall / ideal <= 1.10 else "no")


# -- 5. what a user would write instead -------------------------------------------------------


async def sequential_baseline(path: Path, base_url: str, chunk_size: int) -> float:
    """Plum's PHP sample, in Python: POST one chunk, wait for the answer, next."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(f"you@yourdomain.com:{KEY}".encode()).decode()}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        for i in range(0, len(rows), chunk_size):
            body = "\n".join(",".join([r[1], r[0], r[2]]) for r in rows[i:i + chunk_size])
            form = aiohttp.FormData()
            form.add_field("csv", f"phone_number,{header[0]},{header[2]}\n{body}\n".encode(), filename="c.csv",
                           content_type="text/csv")
            form.add_field("start_timestamp", str(int(time.time())))
            form.add_field("end_timestamp", str(int(time.time()) + 3600))
            form.add_field("max_attempts", "1")
            async with session.post(f"{base_url}/surveys/1/1/bulk_queue", data=form, headers=auth) as response:
                await response.read()
    return time.perf_counter() - started


async def versus_sequential(workdir: Path, size: int) -> Row:
    path = generate_contacts(workdir / f"seq{size}.csv", size, bad_every=0, repeat_every=0)
    async with SimProcess("--latency-mean-seconds", "0.1") as sim:
        baseline = await sequential_baseline(path, sim.base_url, 100)
        await sim.reset()
        url = await fresh_sqlite(workdir)
        ours, _ = await run_campaign(url, path, settings(url, sim.base_url, chunk_size=100,
                                                         rate_limit_per_second=50, max_concurrency=16))
    return Row(f"5. vs a sequential loop, {size:,} contacts, chunk 100, 100 ms latency",
               f"{ours:.2f} s (50/s, 16 in flight, with ingestion and polling)", f"sequential loop {baseline:.2f} s",
               f"{baseline / ours:.1f}x speedup", "> 1", "yes" if baseline > ours else "no")


# -- 6. pick-up latency -------------------------------------------------------------------------


async def pickup_latency(workdir: Path, poll: float) -> Row:
    path = generate_contacts(workdir / "pickup.csv", 50, bad_every=0, repeat_every=0)
    async with SimProcess() as sim:
        url = await fresh_sqlite(workdir)
        start_at = utcnow() + timedelta(seconds=poll * 1.5)
        cfg = settings(url, sim.base_url)
        cfg.scheduler.poll_interval_seconds = poll
        await run_campaign(url, path, cfg, start_at=start_at)
        first = (await sim.stats())["first_request_at"]
    delay = first - start_at.timestamp()
    return Row("6. pick-up latency (start_at -> first request)", f"{delay:.2f} s",
               f"poll_interval_seconds = {poll:g}", f"{delay / poll:.2f} of one interval", "<= 1 interval (+ ingest)",
               "yes" if delay <= poll + 0.5 else "no")


# -- 7. the daemon's closing figure: 20k contacts at 50/s, with a kill -9 ------------------------


async def kill_nine(workdir: Path, size: int, rate: float) -> Row:
    """A real daemon process, killed with SIGKILL mid-campaign and restarted."""
    import signal

    path = generate_contacts(workdir / "kill9.csv", size, bad_every=0, repeat_every=0)
    async with SimProcess("--latency-mean-seconds", "0.05") as sim:
        url = await fresh_sqlite(workdir)
        config = workdir / "kill9.yaml"
        config.write_text(
            f"database: {{url: '{url}'}}\ninsight: {{base_url: '{sim.base_url}', developer_key: {KEY}}}\n"
            f"submission: {{chunk_size: 20, max_concurrency: 8, rate_limit_per_second: {rate}}}\n"
            "scheduler: {poll_interval_seconds: 0.5, worker_id: kill9}\nlogging: {level: ERROR}\n")
        engine = db.create_engine(url)
        repo = Repository(engine)
        now = utcnow()
        row = await repo.create_campaign(NewCampaign("kill9", "1", "1", str(path), now, now + timedelta(hours=1)))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "scheduler", "--config", str(config), "run"]
        proc = subprocess.Popen(command, env=env, cwd=workdir)
        while (await sim.stats())["requests"] < size // 40:  # about half way
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = subprocess.Popen(command, env=env, cwd=workdir)
        try:
            while (await repo.get_campaign(row.id)).status not in FINAL:
                await asyncio.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
        done = await repo.get_campaign(row.id)
        await engine.dispose()
        stats = await sim.stats()
        times = await sim.request_times()
    # The rate of each daemon run on its own: split at the restart (the longest gap).
    gap = max(range(1, len(times)), key=lambda i: times[i] - times[i - 1])
    runs = [times[:gap], times[gap:]]
    achieved = min((len(r) - 1) / (r[-1] - r[0]) for r in runs if len(r) > 20)
    if os.environ.get("BENCH_DEBUG"):
        from scheduler.simulator import max_in_window
        print("gap", times[gap] - times[gap - 1], "max per run", [max_in_window(r, 1.0) for r in runs], file=sys.stderr)
        second = runs[1]
        j = 0
        for i, t in enumerate(second):
            while t - second[j] >= 1.0:
                j += 1
            if i - j + 1 > 50:
                print("window over at", round(second[j] - second[0], 3), "s into run 2:",
                      [round(x - second[j], 3) for x in second[j:i + 1]][:8], "...", file=sys.stderr)
                break
    twice = stats["numbers_queued_more_than_once"]
    accounted = done.contacts_queued + await unknown_contacts(url, row.id)
    ok = twice == 0 and stats["max_started_in_one_second"] <= rate and accounted == done.contacts_valid
    return Row(f"7. kill -9 mid-campaign, {size:,} contacts, chunk 20, {rate:g}/s, restart",
               f"{achieved:.2f}/s (slower of the two runs); max {stats['max_started_in_one_second']} in any 1 s; "
               f"{twice} numbers queued twice; {done.contacts_queued:,} queued + {accounted - done.contacts_queued} in "
               f"{done.chunks_unknown} unknown chunks = {accounted:,} of {done.contacts_valid:,} valid",
               f"R = {rate:g}/s", f"{achieved / rate:.3f}", "0 twice, max <= R, nothing lost", "yes" if ok else "no")


async def unknown_contacts(url: str, campaign_id: int) -> int:
    from sqlalchemy import text

    engine = db.create_engine(url)
    async with engine.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM contacts WHERE campaign_id = :id AND status = 'unknown'"),
                                  {"id": campaign_id})
    await engine.dispose()
    return int(count or 0)


# -- 9. Plum down for 90 s: the circuit breaker ----------------------------------------------


class Collected(logging.Handler):
    """Keeps the records of one logger (and its children) for the duration of a row."""

    def __init__(self, name: str, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []
        self._level = level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "Collected":
        # The daemon run in-process never applies settings.logging (only the CLI and SIGHUP
        # do): the logger's own level is what lets INFO records through.
        self._old_level = self.logger.level
        self.logger.setLevel(self._level)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._old_level)

    def lines(self, *needles: str, since: float = 0.0) -> list[str]:
        """Matching messages, each with its time in seconds after `since` (a time.time() value)."""
        return [f"  t={r.created - since:+7.2f} s {r.levelname} {r.name}: {r.getMessage()}"
                for r in self.records if any(n in r.getMessage() for n in needles)]


async def plum_outage(workdir: Path, outage: float, chunks: int = 60, rate: float = 5) -> tuple[Row, list[str]]:
    """Plum answers 503 to everything for `outage` seconds from the first request, then recovers.
    The project's default retry and outage settings: the breaker, not the bench, decides."""
    path = generate_contacts(workdir / "plum-outage.csv", chunks * 100, bad_every=0, repeat_every=0)
    async with SimProcess("--outage-status", "503", "--outage-seconds", f"{outage:g}") as sim:
        url = await fresh_sqlite(workdir)
        cfg = settings(url, sim.base_url, chunk_size=100, rate_limit_per_second=rate, max_concurrency=4,
                       retry={})  # {}: the defaults (5 tries, 1 s .. 60 s backoff), not settings()' fast ones
        # all of scheduler.*: the breaker's lines are scheduler.dispatcher's; the rest (a warning
        # per 503) would otherwise reach stderr through logging's last-resort handler
        with Collected("scheduler") as logs:
            wall, row = await run_campaign(url, path, cfg)
        stats = await sim.stats()
        if os.environ.get("BENCH_DEBUG"):
            outage_start = stats["outage_started_at"] or 0.0
            print("\n".join(logs.lines("circuit breaker", since=outage_start)), file=sys.stderr)
            print("requests until the first 200 (t, status):", [
                (round(r["started"] - outage_start, 2), r["status"]) for r in await sim.requests()
                if r["started"] <= (stats["first_accepted_after_outage"] or 0.0)], file=sys.stderr)
    start, end = stats["outage_started_at"], stats["outage_ended_at"]
    first = stats["first_accepted_after_outage"]
    delay = None if first is None or end is None else first - end
    during, twice = stats["requests_during_outage"], stats["numbers_queued_more_than_once"]
    probes = sum(1 for r in logs.records if "probe" in r.getMessage() and "circuit breaker is open" in r.getMessage())
    ideal = outage + row.chunks_total / rate
    ok = (row.status == "completed" and row.chunks_failed == 0 and during <= 30 and delay is not None
          and delay <= 30 and twice == 0)
    notes = [f"row 9: circuit breaker (t from the outage's start; it ended at t=+{outage:g} s; {probes} probes):"]
    notes += logs.lines("circuit breaker OPEN", "circuit breaker CLOSED", since=start or 0.0) or ["  (none logged)"]
    return Row(f"9. Plum outage {outage:g} s (503) at R={rate:g}/s, {row.chunks_total} chunks of 100, default retry",
               f"{row.status}, {row.chunks_failed} failed chunks; {during} requests during the outage "
               f"({probes} probes); first 200 {'-' if delay is None else f'{delay:.1f} s'} after it ended; "
               f"{twice} queued twice; {wall:.1f} s wall",
               f"ideal {ideal:.0f} s ({outage:g} s outage + {row.chunks_total} / {rate:g}/s)",
               f"{wall / ideal:.3f} of ideal",
               "completed, 0 failed, <= 30 requests in the outage, first 200 <= 30 s after, 0 twice",
               "yes" if ok else "no"), notes


# -- 10. PostgreSQL down for 10 s mid-campaign ----------------------------------------------------


async def postgres_outage(workdir: Path, size: int, outage: float, stop_after: float,
                          rate: float = 10, timeout: float = 600) -> tuple[Row, list[str]]:
    """A throw-away cluster (never the shared server) stopped ("fast") after `stop_after` s of
    sending, started again `outage` s later; the daemon runs in-process throughout."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from scheduler.errors import DatabaseError
    from tests.support.pg_cluster import TempPostgres

    down_errors = (DatabaseError, SQLAlchemyError, OSError)
    path = generate_contacts(workdir / f"pg-outage{size}.csv", size, bad_every=0, repeat_every=0)
    cluster = TempPostgres(workdir / "pg")
    try:
        cluster.start()
        url = cluster.create_database("insight_bench")
        engine = db.create_engine(url)
        await db.upgrade(engine)
        repo = Repository(engine)
        async with SimProcess("--latency-mean-seconds", "0.2") as sim:
            cfg = settings(url, sim.base_url, chunk_size=100, rate_limit_per_second=rate, max_concurrency=4)
            # not ./insight-scheduler.journal, the default for PostgreSQL: that one may hold someone's answers
            cfg.scheduler.journal_path = str(workdir / "pg-outage.journal")
            poll = cfg.scheduler.poll_interval_seconds
            now = utcnow()
            row = await repo.create_campaign(NewCampaign(
                name="bench", survey_id="1", instance_id="1", contacts_path=str(path),
                start_at=now, end_at=now + timedelta(hours=3)))
            daemon = Daemon(cfg, handle_signals=False)
            with Collected("scheduler") as logs:
                started = time.monotonic()
                task = asyncio.get_running_loop().create_task(daemon.run())
                try:
                    while True:
                        first = (await sim.stats())["first_request_at"]
                        if first is not None and time.time() - first >= stop_after:
                            break
                        if task.done() or time.monotonic() - started > timeout:
                            raise RuntimeError("the campaign did not start sending")
                        await asyncio.sleep(0.05)
                    # in a thread: the daemon's loop (ours too) keeps running, as it would in its own process
                    stopping = time.time()
                    await asyncio.to_thread(cluster.stop, "fast")
                    down = time.time()
                    await asyncio.sleep(outage)
                    await asyncio.to_thread(cluster.restart)
                    back = time.time()
                    while True:
                        try:
                            current = await repo.get_campaign(row.id)
                            if current.status in FINAL:
                                break
                        except down_errors:
                            pass
                        if task.done() or time.monotonic() - started > timeout:
                            raise RuntimeError("campaign did not finish")
                        await asyncio.sleep(0.05)
                    wall = time.monotonic() - started
                finally:
                    daemon.request_stop()
                    await asyncio.wait_for(task, 60)
            stats = await sim.stats()
            requests = await sim.requests()
        async with engine.connect() as conn:
            unknown = await conn.scalar(text("SELECT count(*) FROM chunks WHERE campaign_id = :id AND "
                                             "status = 'unknown'"), {"id": row.id})
            recorded = await conn.scalar(text("SELECT count(*) FROM submissions WHERE status_code = 200"))
        await engine.dispose()
    finally:
        cluster.close()
    sim_200 = stats["by_status"].get("200", 0)
    after = [r["started"] for r in requests if r["started"] >= back]
    resumed = min(after) - back if after else None
    while_down = sum(1 for r in requests if stopping <= r["started"] < back)
    twice = stats["numbers_queued_more_than_once"]
    ideal = current.chunks_total / rate + outage
    ok = (unknown == 0 and recorded == sim_200 and resumed is not None and resumed <= 2 * poll
          and current.status == "completed" and twice == 0)
    notes = [f"row 10: database outage (t from stop(); server down at t=+{down - stopping:.2f} s, "
             f"back at t=+{back - stopping:.2f} s):"]
    notes += logs.lines("database unreachable", "database reachable again", "journal", since=stopping) or [
        "  (none logged)"]
    return Row(f"10. PostgreSQL down {outage:g} s (stop fast, restart) at {rate:g} requests/s, "
               f"{current.chunks_total} chunks of 100, 0.2 s latency",
               f"{current.status}, {unknown} chunks unknown; {sim_200} 200s at the simulator, {recorded} in "
               f"submissions; first request {'-' if resumed is None else f'{resumed:.2f} s'} after the restart "
               f"({while_down} started while down); {twice} queued twice; {wall:.1f} s wall",
               f"ideal {ideal:.0f} s ({current.chunks_total} / {rate:g}/s + {outage:g} s down); "
               f"poll {poll:g} s",
               f"{'-' if resumed is None else f'{resumed / poll:.2f}'} polls to resume; {wall / ideal:.3f} of ideal",
               "completed, 0 unknown, 200s equal, resumes <= 2 polls", "yes" if ok else "no"), notes


# -- 11. three daemon processes on one PostgreSQL database share one Plum account; one killed -9 ------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica_config(home: Path, db_url: str, base_url: str, rate: float, in_flight: int, chunk: int,
                   listen: str | None = None, poll: float = 0.5) -> Path:
    """The same settings for every daemon: default worker id (none given), its own journal.
    `listen` (BENCH_DEBUG only): its HTTP server, for /metrics. `poll`: 0.5 s (a dead replica
    is noticed within 1.5 s) unless a row says otherwise."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    config.write_text("\n".join([
        "database:", f"  url: '{db_url}'",
        "insight:", f"  base_url: '{base_url}'", f"  developer_key: {KEY}", "  timeout_seconds: 30",
        "submission:", f"  chunk_size: {chunk}", f"  max_concurrency: {in_flight}",
        f"  rate_limit_per_second: {rate:g}",
        "scheduler:", f"  poll_interval_seconds: {poll:g}", "  shutdown_grace_seconds: 5",
        f"  journal_path: '{home / 'insight-scheduler.journal'}'",
        "logging:", "  level: WARNING",
        *(["callbacks:", f"  listen: '{listen}'"] if listen else []), ""]))
    return config


def daemon_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}, "PYTHONPATH": str(ROOT)}


def profiled(proc: subprocess.Popen, name: str) -> subprocess.Popen | None:
    """BENCH_PROFILE=DIR: py-spy samples the daemon until it exits, into DIR/NAME.txt (collapsed stacks)."""
    folder = os.environ.get("BENCH_PROFILE")
    if not folder:
        return None
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--threads",
                             *os.environ.get("BENCH_PROFILE_FLAGS", "--gil").split(),
                             "--rate", os.environ.get("BENCH_PROFILE_RATE", "250"), "--format", "raw",
                             "-o", f"{folder}/{name}.txt", "--pid",
                             str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_replica(config: Path) -> subprocess.Popen:
    log = (config.parent / "daemon.log").open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "scheduler", "--config", str(config), "run"],
                                env=daemon_env(), cwd=config.parent, stdout=log, stderr=log)
    finally:
        log.close()


async def stop_processes(procs: list[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM whatever still runs, SIGKILL what has not exited after `grace` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def replicas_kill_nine(workdir: Path, size: int = 30_000, daemons: int = 3, rate: float = 30,
                             in_flight: int = 4, chunk: int = 100, kill_after: float | None = 5.0,
                             workers_after: float = 3.0, timeout: float = 180) -> tuple[Row, list[str]]:
    """`daemons` daemon processes, the same config, one PostgreSQL database, one Plum account; the
    campaign created as `campaign create --contacts` does (file stored); one daemon killed -9
    `kill_after` s after the first request (None: no kill, a control run; the times are then from
    5 s in), `insight-scheduler workers` run `workers_after` s later."""
    import signal

    from sqlalchemy import text

    path = generate_contacts(workdir / f"replicas{size}.csv", size, bad_every=0, repeat_every=0)
    base = workdir / "replicas"
    procs: list[subprocess.Popen] = []
    url = await fresh_postgres()
    engine = None
    try:
        async with SimProcess("--latency-mean-seconds", "0.1", "--latency-jitter-seconds", "0.05") as sim:
            engine = db.create_engine(url)
            repo = Repository(engine)
            now = utcnow()
            row = await repo.create_campaign(NewCampaign("replicas", "1", "1", str(path), now,
                                                         now + timedelta(hours=1)), stored_files.pack(path))
            ports = [free_port() if os.environ.get("BENCH_DEBUG") else None for _ in range(daemons)]
            configs = [replica_config(base / f"d{i + 1}", url, sim.base_url, rate, in_flight, chunk,
                                      port and f"127.0.0.1:{port}") for i, port in enumerate(ports)]
            procs = [start_replica(config) for config in configs]
            started = time.monotonic()
            first = None
            while first is None:
                first = (await sim.stats())["first_request_at"]
                if time.monotonic() - started > timeout or any(p.poll() is not None for p in procs):
                    raise RuntimeError("the replicas did not start sending; see their daemon.log in " + str(base))
                await asyncio.sleep(0.02)
            await asyncio.sleep(max(0.0, first + (5.0 if kill_after is None else kill_after) - time.time()))
            victim = procs[0] if kill_after is not None else None
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
            killed_at = time.time()
            workers_output: list[str] = []
            done = None

            async def run_workers() -> None:
                await asyncio.sleep(workers_after)
                out = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "scheduler", "--config", str(configs[-1]), "workers"],
                    env=daemon_env(), cwd=configs[-1].parent, capture_output=True, text=True, timeout=60)
                workers_output.extend((out.stdout + out.stderr).rstrip().splitlines())
                workers_output.insert(0, f"(exit {out.returncode}, run at t=+{time.time() - killed_at:.2f} s "
                                         f"after the kill; campaign "
                                         f"{(await repo.get_campaign(row.id)).status} then)")

            workers_task = asyncio.get_running_loop().create_task(run_workers())
            try:
                while True:
                    done = await repo.get_campaign(row.id)
                    if done.status in FINAL:
                        seen_done = time.time()
                        break
                    if time.monotonic() - started > timeout or all(p.poll() is not None for p in procs):
                        raise RuntimeError(f"campaign did not finish: {done.status} {done.last_error}")
                    await asyncio.sleep(0.05)
            finally:
                await workers_task
            stats = await sim.stats()
            requests = await sim.requests()
            sent = await repo.requests_by_worker()
            async with engine.connect() as conn:
                unknown_chunks = int(await conn.scalar(text(
                    "SELECT count(*) FROM chunks WHERE campaign_id = :id AND status = 'unknown'"), {"id": row.id}))
                unknown = int(await conn.scalar(text(
                    "SELECT count(*) FROM contacts WHERE campaign_id = :id AND status = 'unknown'"), {"id": row.id}))
                victim_id = victim and await conn.scalar(text("SELECT worker_id FROM workers WHERE pid = :pid"),
                                                         {"pid": victim.pid})
                if os.environ.get("BENCH_DEBUG"):
                    await replicas_debug(conn, row.id, requests, first, killed_at, in_flight,
                                         {**{f"d{i + 1}": proc.pid for i, proc in enumerate(procs)},
                                          "simulator": sim.proc.pid}, ports)
        await stop_processes(procs)
    finally:
        await stop_processes(procs)
        if engine is not None:
            await engine.dispose()
        await drop_postgres(url)
    finished = done.finished_at.timestamp() if done.finished_at is not None else seen_done
    done_after = finished - first
    achieved = achieved_rate(stats)
    per_second, most_in_flight = stats["max_started_in_one_second"], stats["max_in_flight"]
    twice = stats["numbers_queued_more_than_once"]
    accounted = done.contacts_queued + unknown
    ok = (per_second <= rate and most_in_flight <= in_flight and achieved / rate >= 0.9 and twice == 0
          and unknown_chunks <= in_flight and done_after <= 40 and accounted == done.contacts_valid
          and done.status in ("completed", "completed_with_errors"))
    # Evidence for the rate: the longest pause between two requests at the simulator, and when.
    times = sorted(r["started"] for r in requests)
    gaps = sorted(((times[i] - times[i - 1], times[i - 1]) for i in range(1, len(times))), reverse=True)[:3]
    logs = {c.parent.name: (c.parent / "daemon.log").read_text(errors="replace").splitlines() for c in configs}
    notes = [f"row 11: `insight-scheduler workers` during the run (killed: "
             f"{f'{victim_id}, pid {victim.pid}' if victim else 'none'}):"]
    notes += ["  " + line for line in workers_output] or ["  (no output)"]
    notes.append(f"row 11: requests per daemon {sent}; longest pauses between requests at the simulator: " + ", ".join(
        f"{g:.2f} s at t={t - killed_at:+.2f} s from the kill" for g, t in gaps))
    notes.append("row 11: daemon logs (WARNING and up): " + ", ".join(
        f"{name} {len(lines)} lines" for name, lines in logs.items()))
    for name, lines in logs.items():
        notes += [f"  {name}: {line}" for line in lines[:5]]
    return Row(f"11. {daemons} daemon processes, one PostgreSQL database, {size:,} contacts (stored file), chunk "
               f"{chunk}, {rate:g}/s, {in_flight} in flight, 0.1 s latency, "
               + ("no kill" if kill_after is None else f"one killed -9 {kill_after:g} s in"),
               f"max {per_second} in any 1 s; max {most_in_flight} in flight; {achieved:.2f}/s while sending "
               f"({stats['requests']} requests); {twice} numbers queued twice; {unknown_chunks} unknown chunks "
               f"({done.contacts_queued:,} queued + {unknown} unknown = {accounted:,} of {done.contacts_valid:,} "
               f"valid); {done.status} {done_after:.1f} s after the first request",
               f"R = {rate:g}/s, {in_flight} in flight (each daemon's config, account-wide)",
               f"{achieved / rate:.3f} of R",
               f"max <= R, in flight <= {in_flight}, >= 0.9 R, 0 twice, <= {in_flight} unknown chunks, done <= 40 s",
               "yes" if ok else "no"), notes


async def replicas_debug(conn, campaign_id: int, requests: list[dict], first: float, killed_at: float,
                         in_flight: int, pids: dict[str, int], ports: list[int | None]) -> None:
    """BENCH_DEBUG: where each request's in-flight slot went (claim -> send -> answer -> recorded)."""
    from sqlalchemy import text

    subs = (await conn.execute(text(
        "SELECT s.chunk_id, s.worker, s.attempt, extract(epoch from s.started_at), extract(epoch from s.finished_at), "
        "s.latency_seconds, s.outcome FROM submissions s WHERE s.campaign_id = :id ORDER BY s.started_at"),
        {"id": campaign_id})).all()
    chunk_of = dict((await conn.execute(text("SELECT phone, chunk_id FROM contacts WHERE campaign_id = :id"),
                                        {"id": campaign_id})).all())
    by_chunk = {}
    for sub in subs:
        by_chunk.setdefault(sub[0], []).append(sub)
    leads, posts, tails, occ = [], [], [], []
    for r in requests:
        if not r["numbers"]:
            continue
        number = r["numbers"][0]
        number = number if number.startswith("+") else "+" + number
        chunk = chunk_of.get(number)
        for sub in by_chunk.get(chunk, []):
            if float(sub[3]) <= r["started"] + 0.05 and (sub[4] is None or float(sub[4]) >= r["started"]):
                claim, done = float(sub[3]), sub[4] and float(sub[4])
                leads.append(r["started"] - claim)
                if done and sub[5] is not None:
                    posts.append(sub[5])
                    tails.append(done - r["started"] - sub[5])
                    occ.append(done - claim)
                break

    def summary(name: str, values: list[float]) -> str:
        values = sorted(values)
        if not values:
            return f"{name}: -"
        return (f"{name}: mean {sum(values) / len(values) * 1000:.0f} ms, median {values[len(values) // 2] * 1000:.0f}"
                f", p90 {values[int(len(values) * 0.9)] * 1000:.0f}, max {values[-1] * 1000:.0f} ms (n={len(values)})")

    print("row 11 debug: per request, from the claim (submission started_at) to the answer recorded "
          "(finished_at):", file=sys.stderr)
    for name, values in (("claim -> arrival at the simulator", leads), ("POST (client latency)", posts),
                         ("answer -> recorded (finished_at)", tails), ("slot held (claim -> recorded)", occ)):
        print("  " + summary(name, values), file=sys.stderr)
    # The account's in-flight count over time (chunks submitting), from the submissions' times.
    events = sorted([(float(s[3]), 1) for s in subs] + [(float(s[4]), -1) for s in subs if s[4] is not None])
    level, last, weighted, at_max, freed_waits, freed_at = 0, events[0][0], 0.0, 0.0, [], None
    for t, step in events:
        weighted += level * (t - last)
        at_max += (t - last) if level >= in_flight else 0.0
        if step > 0 and freed_at is not None:
            freed_waits.append(t - freed_at)
            freed_at = None
        if step < 0 and level == in_flight:
            freed_at = t
        level += step
        last = t
    span = events[-1][0] - events[0][0]
    print(f"  submitting on average {weighted / span:.2f} (limit {in_flight}), at the limit {at_max / span:.0%} of "
          f"{span:.1f} s", file=sys.stderr)
    print("  " + summary("from a slot freed at the limit to the next claim", freed_waits), file=sys.stderr)
    workers = {}
    for s in subs:
        workers.setdefault(s[1], []).append(float(s[3]))
    for worker, claims in workers.items():
        print(f"  {worker}: {len(claims)} claims, first {claims[0] - first:+.2f} s last {claims[-1] - first:+.2f} s "
              f"from the first request", file=sys.stderr)
    print(f"  kill at {killed_at - first:+.2f} s from the first request", file=sys.stderr)
    for chunk_id, claimed, moved in (await conn.execute(text(
            "SELECT c.id, extract(epoch from s.started_at), extract(epoch from c.updated_at) FROM chunks c "
            "JOIN submissions s ON s.chunk_id = c.id WHERE c.campaign_id = :id AND c.status = 'unknown'"),
            {"id": campaign_id})).all():
        print(f"  unknown chunk {chunk_id}: claimed {float(claimed) - first:+.2f} s, declared unknown "
              f"{float(moved) - first:+.2f} s ({float(moved) - killed_at:.2f} s after the kill)", file=sys.stderr)
    times = sorted(r["started"] for r in requests)
    phases = [("before the kill", first, killed_at), ("kill .. +3 s", killed_at, killed_at + 3),
              ("+3 s .. end", killed_at + 3, times[-1])]
    for name, lo, hi in phases:
        n = sum(1 for t in times if lo <= t < hi)
        print(f"  {name}: {n} requests in {hi - lo:.2f} s = {n / (hi - lo):.1f}/s", file=sys.stderr)
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            print(f"  CPU {name} (pid {pid}): {(int(fields[11]) + int(fields[12])) / tick:.2f} s", file=sys.stderr)
        except (OSError, IndexError):
            print(f"  CPU {name} (pid {pid}): gone", file=sys.stderr)
    name = conn.engine.url.database
    backends = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f" {name} ".encode() in (proc / "cmdline").read_bytes():
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                backends += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    commits = (await conn.execute(text("SELECT xact_commit, xact_rollback FROM pg_stat_database "
                                       "WHERE datname = :name"), {"name": name})).first()
    print(f"  CPU PostgreSQL backends of {name} (live ones): {backends:.2f} s; transactions {tuple(commits)}",
          file=sys.stderr)
    interval = 1.01 / 30
    gaps = [b - a for a, b in zip(times, times[1:])]
    spaced = sum(1 for g in gaps if interval - 0.003 <= g <= interval + 0.006)
    print(f"  inter-arrival: {sum(1 for g in gaps if g < interval - 0.003)} shorter than the interval "
          f"({interval * 1000:.1f} ms), {spaced} within -3/+6 ms of it (rate-spaced), "
          f"{sum(1 for g in gaps if g > interval + 0.006)} longer; mean {sum(gaps) / len(gaps) * 1000:.1f} ms",
          file=sys.stderr)
    print(f"  load average {os.getloadavg()}", file=sys.stderr)
    async with aiohttp.ClientSession() as session:
        for i, port in enumerate(ports):
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    page = await response.text()
            except aiohttp.ClientError:
                print(f"  d{i + 1} /metrics: gone", file=sys.stderr)
                continue
            wanted = [line for line in page.splitlines() if line.startswith(
                ("insight_rate_slots_rebooked_total", "insight_submissions_total"))]
            print(f"  d{i + 1} /metrics: " + "; ".join(wanted), file=sys.stderr)


# -- 12. daemon CPU per request ----------------------------------------------------------


def cpu_seconds(pid: int, task: str = "") -> float:
    """A process's (or one of its threads') CPU time, user + system, from /proc."""
    fields = Path(f"/proc/{pid}{task}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread: the event loop's ("main") and each other's (by thread id)."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "main" if task.name == str(pid) else f"thread {task.name}"
            found[name] = found.get(name, 0.0) + cpu_seconds(pid, f"/task/{task.name}")
        except OSError:
            continue  # the thread ended meanwhile
    return found


async def send_path_cpu(workdir: Path, chunk: int, in_flight: int, requests: int) -> Row:
    """One daemon process (`insight-scheduler run`, SQLite) sending `requests` chunks of `chunk`
    contacts with `in_flight` requests at once and a rate far above N/L, to a simulator
    answering in 50-150 ms: the daemon's CPU time from its first request to its last, per
    request, beside the simulator's. The daemon ticks at the default poll interval (what an
    admin runs; the replica rows poll every 0.5 s, and a tick costs ~10-20 ms whatever the
    traffic): the run lasts several ticks."""
    poll = Settings().scheduler.poll_interval_seconds
    latency = 0.1
    path = generate_contacts(workdir / f"cpu{chunk}.csv", requests * chunk, bad_every=0, repeat_every=0)
    home = workdir / f"cpu{chunk}-{in_flight}"
    async with SimProcess("--latency-mean-seconds", str(latency), "--latency-jitter-seconds", "0.05") as sim:
        url = f"sqlite+aiosqlite:///{home / 'bench.db'}"
        config = replica_config(home, url, sim.base_url, 10_000, in_flight, chunk, poll=poll)
        engine = db.create_engine(url)
        await db.upgrade(engine)
        repo = Repository(engine)
        now = utcnow()
        row = await repo.create_campaign(NewCampaign("cpu", "1", "1", str(path), now, now + timedelta(hours=1)),
                                         stored_files.pack(path))
        proc = start_replica(config)
        spy = profiled(proc, home.name)
        try:
            first_cpu = last_cpu = None
            deadline = time.monotonic() + 300
            while last_cpu is None:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the daemon did not send everything; see {home / 'daemon.log'}")
                stats = await sim.stats()
                daemon_cpu, sim_cpu = cpu_seconds(proc.pid), cpu_seconds(sim.proc.pid)
                if first_cpu is None and stats["requests"] >= 1:
                    first_cpu, first_count, first_threads = (daemon_cpu, sim_cpu), stats["requests"], thread_cpu(proc.pid)
                    requests = (await repo.get_campaign(row.id)).chunks_total  # ingested: every chunk, once
                if first_cpu is not None and stats["requests"] >= requests:
                    last_cpu, last_count, last_threads = (daemon_cpu, sim_cpu), stats["requests"], thread_cpu(proc.pid)
                await asyncio.sleep(0.02)
            while (await repo.get_campaign(row.id)).status not in FINAL:
                await asyncio.sleep(0.05)
        finally:
            await stop_processes([proc])
            await engine.dispose()
            if spy is not None:
                spy.wait(60)
    counted = last_count - first_count
    daemon_ms = (last_cpu[0] - first_cpu[0]) / counted * 1000
    if os.environ.get("BENCH_DEBUG"):
        print(f"row 12, chunk {chunk}: daemon CPU ms per request by thread: " + ", ".join(
            f"{name} {(seconds - first_threads.get(name, 0.0)) / counted * 1000:.2f}"
            for name, seconds in sorted(last_threads.items(), key=lambda item: -item[1])), file=sys.stderr)
    sim_ms = (last_cpu[1] - first_cpu[1]) / counted * 1000
    achieved, ideal = achieved_rate(stats), in_flight / latency
    goal_ms = 2.0 if chunk <= 100 else 4.0
    return Row(f"12. daemon CPU per request, chunk {chunk}, {in_flight} in flight, 50-150 ms answers "
               f"({stats['requests']} requests, SQLite, daemon process, poll {poll:g} s)",
               f"daemon {daemon_ms:.2f} ms CPU per request (simulator {sim_ms:.2f} ms); {achieved:.1f}/s",
               f"N/L = {ideal:.0f}/s", f"{daemon_ms:.2f} ms; {achieved / ideal:.3f} of N/L",
               f"<= {goal_ms:g} ms CPU per request", "yes" if daemon_ms <= goal_ms else "no")


def table(rows: list[Row]) -> str:
    lines = ["| benchmark | measured | baseline / limit | ratio | goal | met |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.measured} | {r.baseline} | {r.ratio} | {r.goal} | {r.met} |" for r in rows]
    return "\n".join(lines)


async def main(quick: bool, only: set[int]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="insight-bench-"))
    rows: list[Row] = []
    notes: list[str] = []
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    wanted = (lambda n: not only or n in only)  # noqa: E731
    if wanted(1):
        rows += await rate_fidelity(workdir, [5, 20] if quick else [5, 20, 50, 100], 4 if quick else 8)
    if wanted(2):
        rows += await latency_bound(workdir, [4, 16] if quick else [4, 16, 64], 10 if quick else 25)
    sqlite_seconds: dict[int, float] = {}
    if wanted(3):
        ingest_rows, sqlite_seconds = await ingestion(workdir, sizes)
        rows += ingest_rows
    if wanted(4):
        rows.append(await end_to_end(workdir, sizes[-1], 50, sqlite_seconds.get(sizes[-1])))
    if wanted(5):
        rows.append(await versus_sequential(workdir, 5_000 if quick else 10_000))
    if wanted(6):
        rows.append(await pickup_latency(workdir, 2.0))
    if wanted(7):
        rows.append(await kill_nine(workdir, 5_000 if quick else 20_000, 50))
    if wanted(8):
        rows.append(await ingestion_with_windows(workdir, sizes[-1]))
    if wanted(9):
        row, more = await plum_outage(workdir, 20 if quick else 90)
        rows.append(row)
        notes += more
    if wanted(10):
        row, more = await postgres_outage(workdir, 5_000 if quick else 15_000, 5 if quick else 10,
                                          2 if quick else 5)
        rows.append(row)
        notes += more
    if wanted(11):
        row, more = await (replicas_kill_nine(workdir, 10_000, kill_after=2.0, workers_after=1.0) if quick
                           else replicas_kill_nine(workdir, 30_000))
        rows.append(row)
        notes += more
    if wanted(12):
        rows.append(await send_path_cpu(workdir, 100, 16, 100 if quick else 2000))
        rows.append(await send_path_cpu(workdir, 1000, 4, 40 if quick else 500))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nbench run {stamp} on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()})\n")
    print(table(rows))
    if notes:
        print("\n" + "\n".join(notes))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--ingest-one":
        print(json.dumps(asyncio.run(ingest_once(int(sys.argv[2]), sys.argv[3], sys.argv[4] or None))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", default="", help="comma-separated row numbers, e.g. 1,2")
    options = parser.parse_args()
    asyncio.run(main(options.quick, {int(n) for n in options.only.split(",") if n}))
