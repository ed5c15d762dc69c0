"""Request bodies built at ingestion (chunk_bodies): sent as they are while they hold exactly the
chunk's contacts in the configured format, rebuilt from the contacts otherwise (issue 15)."""

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from scheduler import ingest
from scheduler.chunking import body_format, packed_chunk_csv
from scheduler.config import Settings
from scheduler.ledger import AccountLimits, ClaimTimes
from scheduler.repository import NewCampaign
from tests.support.harness import (campaign, claim_for_ingestion, e164, execute, rows, running_daemon, scalar,
                                   settings_for, simulator, valid_numbers, wait_for)

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}
E164 = body_format("phone_number", "e164")


def messy_file(path, count):
    """An Excel-like export: BOM, CRLF, quoted fields with commas, quotes and line-free unicode,
    an empty column, a blank line and an invalid number."""
    numbers = valid_numbers(count)
    lines = ['\ufeff"phone",Name,Notes,Empty']
    for i, number in enumerate(numbers):
        note = f'"said ""call me"", at {i}"' if i % 3 == 0 else ("Zoë" if i % 3 == 1 else "")
        lines.append(f'{number},"Doe, J{i}",{note},')
        if i == 4:
            lines += ["", "not-a-number,Bad,,"]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return numbers


async def ingested(repo, path, settings: Settings, **overrides):
    now = datetime.now(timezone.utc)
    fields = dict(name="b", survey_id="77", instance_id="3", contacts_path=str(path),
                  start_at=now - timedelta(seconds=1), end_at=now + timedelta(hours=6))
    fields.update(overrides)
    row = await repo.create_campaign(NewCampaign(**fields))
    assert await ingest.ingest_campaign(repo, await claim_for_ingestion(repo, row), settings, "w",
                                        lambda: datetime.now(timezone.utc))
    return row


async def claim_all(repo, fmt: str):
    """Every ready chunk, claimed as the dispatcher does: (claim, payload) in claim order."""
    claimed = []
    while True:
        now = datetime.now(timezone.utc)
        times = ClaimTimes(now=now, lease_until=now + timedelta(minutes=2), opens_by=now + timedelta(days=2),
                           open_until=now)
        got = await repo.claim_chunks("w", times, 0, None, AccountLimits("acct", 0.001, 1000), 8, fmt)
        if not got:
            return claimed
        claimed += got


async def built_from_contacts(repo, chunk_id: int, header: str, phone_column="phone_number", number_format="e164"):
    contacts = await rows(repo, "SELECT phone, extra FROM contacts WHERE chunk_id = :c AND status = 'pending' "
                                "ORDER BY row_number", c=chunk_id)
    return packed_chunk_csv(phone_column, json.loads(header)["extra"], [tuple(r) for r in contacts], number_format)


@pytest.mark.parametrize("windows", [False, True], ids=["file-order", "by-time-zone"])
async def test_each_chunk_is_sent_as_built_at_ingestion(repo, tmp_path, windows):
    numbers = messy_file(tmp_path / "c.csv", 47)
    config = {"submission": {"chunk_size": 10}}
    if windows:  # chunks fill by time zone, out of file order, and close at the end of the file
        config["contacts"] = {"calling_window": "00:00-24:00"}
    row = await ingested(repo, tmp_path / "c.csv", Settings.model_validate(config))
    header = (await repo.get_campaign(row.id)).contacts_header
    assert await scalar(repo, "SELECT count(*) FROM chunk_bodies") == await scalar(repo, "SELECT count(*) FROM chunks")
    claimed = await claim_all(repo, E164)
    assert sum(claim.contact_count for claim, _ in claimed) == len(numbers)
    for claim, payload in claimed:
        assert isinstance(payload, bytes), "the stored body is what a claim hands over"
        assert payload == await built_from_contacts(repo, claim.chunk_id, header)
    sent = [line.split(",")[0] for _, payload in claimed for line in payload.decode().splitlines()[1:]]
    assert sorted(sent) == sorted(e164(n) for n in numbers)


async def test_a_body_that_no_longer_matches_is_rebuilt_from_the_contacts(repo, tmp_path):
    messy_file(tmp_path / "c.csv", 30)
    row = await ingested(repo, tmp_path / "c.csv", Settings.model_validate({"submission": {"chunk_size": 10}}))
    header = (await repo.get_campaign(row.id)).contacts_header
    first = await rows(repo, "SELECT phone FROM contacts WHERE chunk_id = (SELECT min(id) FROM chunks) "
                             "ORDER BY row_number LIMIT 1")
    await repo.add_suppressions([first[0][0]], "asked", "test", datetime.now(timezone.utc))
    # another number format than the bodies were built with: every chunk is built at send time
    claimed = await claim_all(repo, body_format("phone_number", "digits"))
    assert [type(payload) for _, payload in claimed] == [list] * 3
    claimed_again = await claim_all(repo, E164)
    assert claimed_again == []  # all three are submitting now; give them back and claim with e164
    await execute(repo, "UPDATE chunks SET status = 'pending'")
    claimed = await claim_all(repo, E164)
    kinds = {claim.seq: type(payload) for claim, payload in claimed}
    assert kinds == {0: list, 1: bytes, 2: bytes}  # the suppression changed chunk 0 only
    for claim, payload in claimed:
        rebuilt = await built_from_contacts(repo, claim.chunk_id, header)
        assert (payload if isinstance(payload, bytes) else packed_chunk_csv(
            "phone_number", json.loads(header)["extra"], payload)) == rebuilt
    assert first[0][0] not in (await built_from_contacts(repo, claimed[0][0].chunk_id, header)).decode()


async def test_the_number_format_changed_after_ingestion_is_what_plum_gets(repo, db_url, tmp_path):
    numbers = valid_numbers(12)
    messy = tmp_path / "c.csv"
    messy.write_text("phone_number,name\n" + "".join(f"{n},x{i}\n" for i, n in enumerate(numbers)), encoding="utf-8")
    row = await ingested(repo, messy, Settings.model_validate({"submission": {"chunk_size": 5}}))
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url, chunk_size=5)
        settings = settings.model_copy(update={"insight": settings.insight.model_copy(
            update={"number_format": "digits"})})
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed"
    sent = sorted(line.split(",")[0] for r in sim.requests for line in (r.csv_text or "").splitlines()[1:])
    assert sent == sorted(e164(n).lstrip("+") for n in numbers)


async def test_a_succeeded_chunk_keeps_no_body(repo, db_url, tmp_path):
    numbers = valid_numbers(25)
    path = tmp_path / "c.csv"
    path.write_text("phone_number\n" + "\n".join(numbers) + "\n", encoding="utf-8")
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(path, chunk_size=10))
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed" and len(sim.requests) == 3
    assert sorted(sim.queued_numbers) == sorted(e164(n) for n in numbers)
    assert await scalar(repo, "SELECT count(*) FROM chunk_bodies") == 0


async def test_a_campaign_deleted_by_an_admin_takes_its_bodies_with_it(repo, db_url, tmp_path):
    messy_file(tmp_path / "c.csv", 20)
    row = await ingested(repo, tmp_path / "c.csv", Settings.model_validate({"submission": {"chunk_size": 10}}))
    assert await scalar(repo, "SELECT count(*) FROM chunk_bodies") == 2
    if db_url.startswith("sqlite"):
        def admin_deletes() -> None:  # the sqlite3 shell: foreign keys off
            with sqlite3.connect(db_url.split("///", 1)[1]) as conn:
                assert conn.execute("PRAGMA foreign_keys").fetchone() == (0,)
                conn.execute("DELETE FROM campaigns WHERE id = ?", (row.id,))

        await asyncio.to_thread(admin_deletes)
    else:
        await execute(repo, "DELETE FROM campaigns WHERE id = :id", id=row.id)
    assert await scalar(repo, "SELECT count(*) FROM chunks") == 0
    assert await scalar(repo, "SELECT count(*) FROM chunk_bodies") == 0
