"""How long the console's campaign page takes for a campaign of N contacts (README figure).

    .venv/bin/python -m tests.support.console_bench --contacts 1000000 [--database-url URL]

Writes the campaign as its ledger would be at the end (N contacts queued in N/1000 chunks, one
accepted submission per chunk over a few minutes, a call result per contact) with set-based SQL,
then signs in and times GET /console/campaigns/ID (the first answer and the median of 10), its
live fragment and the campaigns page, over loopback HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from scheduler import db
from scheduler.repository import Repository
from tests.support.console import add_user, console_client, sign_in

CHUNK = 1000


def _statements(dialect: str, contacts: int, start: datetime) -> list[str]:
    chunks = (contacts + CHUNK - 1) // CHUNK
    t0 = start.strftime("%Y-%m-%d %H:%M:%S")
    if dialect == "postgresql":
        series, ts = "generate_series(1, {n}) AS g(i)", "TIMESTAMPTZ '{t0}+00' + (g.i * interval '0.2 second')"
        return [
            f"INSERT INTO chunks (campaign_id, seq, status, contact_count, attempts, created_at, updated_at) "
            f"SELECT 1, g.i - 1, 'succeeded', {CHUNK}, 1, now(), now() FROM {series.format(n=chunks)}",
            f"INSERT INTO contacts (campaign_id, row_number, raw_phone, phone, extra, status, chunk_id) "
            f"SELECT 1, g.i, '617555' || lpad((g.i % 10000)::text, 4, '0'), '+1617555' || lpad((g.i % 10000)::text, 4, '0'), "
            f"NULL, 'queued', (g.i - 1) / {CHUNK} + 1 FROM {series.format(n=contacts)}",
            f"INSERT INTO submissions (campaign_id, chunk_id, attempt, worker, started_at, finished_at, status_code, "
            f"outcome, contact_count) SELECT 1, g.i, 1, 'bench', {ts.format(t0=t0)}, {ts.format(t0=t0)}, 200, "
            f"'accepted', {CHUNK} FROM {series.format(n=chunks)}",
            f"INSERT INTO call_results (campaign_id, chunk_id, contact_id, phone, status, received_at, body, body_sha256) "
            f"SELECT 1, (g.i - 1) / {CHUNK} + 1, g.i, NULL, CASE WHEN g.i % 3 = 0 THEN 'no_answer' ELSE 'completed' END, "
            f"now(), '{{}}', md5(g.i::text) FROM {series.format(n=contacts)}",
            "ANALYZE",
        ]
    rec = "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) "
    ts = f"strftime('%Y-%m-%d %H:%M:%f000', '{t0}', '+' || (g.i * 0.2) || ' seconds')"
    return [
        rec.format(n=chunks) + "INSERT INTO chunks (campaign_id, seq, status, contact_count, attempts, created_at, "
        f"updated_at) SELECT 1, i - 1, 'succeeded', {CHUNK}, 1, '{t0}', '{t0}' FROM g",
        rec.format(n=contacts) + "INSERT INTO contacts (campaign_id, row_number, raw_phone, phone, extra, status, "
        f"chunk_id) SELECT 1, i, '617555' || substr('0000' || (i % 10000), -4), '+1617555' || substr('0000' || (i % 10000), -4), "
        f"NULL, 'queued', (i - 1) / {CHUNK} + 1 FROM g",
        rec.format(n=chunks) + "INSERT INTO submissions (campaign_id, chunk_id, attempt, worker, started_at, "
        f"finished_at, status_code, outcome, contact_count) SELECT 1, i, 1, 'bench', {ts}, {ts}, 200, 'accepted', "
        f"{CHUNK} FROM g",
        rec.format(n=contacts) + "INSERT INTO call_results (campaign_id, chunk_id, contact_id, phone, status, "
        f"received_at, body, body_sha256) SELECT 1, (i - 1) / {CHUNK} + 1, i, NULL, CASE WHEN i % 3 = 0 THEN "
        f"'no_answer' ELSE 'completed' END, '{t0}', '{{}}', hex(i) FROM g",
        "ANALYZE",
    ]


async def populate(repo: Repository, contacts: int) -> None:
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    async with repo.engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at, status, "
            "ingested_at, contacts_total, contacts_valid, contacts_queued, chunks_total, chunks_succeeded, "
            "contacts_header) VALUES ('one million', '1', '1', 'big.csv', :s, :e, 'completed', :s, :n, :n, :n, "
            ":c, :c, '{\"phone\": \"phone_number\", \"extra\": [\"name\"]}')"),
            {"s": start, "e": start + timedelta(hours=5), "n": contacts, "c": (contacts + CHUNK - 1) // CHUNK})
        for statement in _statements(conn.dialect.name, contacts, start):
            await conn.execute(text(statement))


async def timed(client, path: str, runs: int = 10) -> tuple[float, float]:
    """Seconds for the first answer and the median of ``runs`` more."""
    times = []
    for _ in range(runs + 1):
        began = time.perf_counter()
        response = await client.get(path)
        await response.read()
        assert response.status == 200, path
        times.append(time.perf_counter() - began)
    return times[0], statistics.median(times[1:])


async def main(contacts: int, url: str | None) -> None:
    url = url or f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='console-bench-')}/bench.db"
    engine = db.create_engine(url)
    await db.upgrade(engine)
    repo = Repository(engine)
    try:
        began = time.perf_counter()
        await populate(repo, contacts)
        print(f"{db.safe_url(url)}: {contacts:,} contacts, call results and {contacts // CHUNK:,} chunks written "
              f"in {time.perf_counter() - began:.1f} s")
        await add_user(repo, "bench", "viewer")
        async with console_client(repo) as client:
            await sign_in(client, "bench")
            for path in ("/console/campaigns/1", "/console/campaigns/1/live", "/console/"):
                first, median = await timed(client, path)
                print(f"GET {path}: first {first * 1000:.0f} ms, median of 10 {median * 1000:.0f} ms")
    finally:
        await repo.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--database-url")
    options = parser.parse_args()
    asyncio.run(main(options.contacts, options.database_url))
