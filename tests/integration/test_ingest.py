"""Ingestion on both databases: concurrent campaigns, the worker-process path, exact accounting."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from scheduler import ingest
from scheduler.config import Settings
from scheduler.demo import generate_contacts
from scheduler.repository import NewCampaign
from tests.support.harness import claim_for_ingestion, rows


def new(path, **overrides):
    now = datetime.now(timezone.utc)
    fields = dict(name="c", survey_id="1", instance_id="1", contacts_path=str(path), start_at=now,
                  end_at=now + timedelta(hours=1), chunk_size=100)
    fields.update(overrides)
    return NewCampaign(**fields)


@pytest.mark.parametrize("threshold", [10**12, 0], ids=["thread", "process"])
async def test_concurrent_ingestions_each_account_for_every_row(repo, tmp_path, monkeypatch, threshold):
    monkeypatch.setattr(ingest, "PROCESS_THRESHOLD_BYTES", threshold)
    shared = generate_contacts(tmp_path / "shared.csv", 1500, bad_every=97, repeat_every=89)
    other = generate_contacts(tmp_path / "other.csv", 700, seed=3)
    campaigns = [await claim_for_ingestion(repo, await repo.create_campaign(new(p))) for p in (shared, shared, other)]
    clock = lambda: datetime.now(timezone.utc)  # noqa: E731
    results = await asyncio.gather(*(ingest.ingest_campaign(repo, c, Settings(), "w", clock) for c in campaigns))
    assert results == [True, True, True]
    for campaign, total in zip(campaigns, (1500, 1500, 700)):
        row = await repo.get_campaign(campaign.id)
        assert row.contacts_total == total
        assert row.contacts_valid + row.contacts_invalid + row.contacts_duplicate == total
        counted = dict(await rows(repo, "SELECT status, count(*) FROM contacts WHERE campaign_id = :id "
                                        "GROUP BY status", id=campaign.id))
        assert counted.get("pending", 0) == row.contacts_valid
        assert counted.get("invalid", 0) == row.contacts_invalid > 0
        assert counted.get("duplicate", 0) == row.contacts_duplicate > 0
        sizes = await rows(repo, "SELECT contact_count FROM chunks WHERE campaign_id = :id ORDER BY seq",
                           id=campaign.id)
        assert sum(n for (n,) in sizes) == row.contacts_valid
        assert all(n == 100 for (n,) in sizes[:-1])
    first, second = campaigns[0].id, campaigns[1].id
    a = await rows(repo, "SELECT row_number, phone, status FROM contacts WHERE campaign_id = :id ORDER BY row_number",
                   id=first)
    b = await rows(repo, "SELECT row_number, phone, status FROM contacts WHERE campaign_id = :id ORDER BY row_number",
                   id=second)
    assert a == b  # the same file gives the same result, even read at the same time


async def test_a_file_that_turns_bad_midway_fails_cleanly(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "PROCESS_THRESHOLD_BYTES", 0)
    path = tmp_path / "broken.csv"
    path.write_bytes(b"phone_number\n" + b"2127365000\n" * 9000 + b"\xff\xfe\n")
    campaign = await claim_for_ingestion(repo, await repo.create_campaign(new(path)))
    ok = await ingest.ingest_campaign(repo, campaign, Settings(), "w", lambda: datetime.now(timezone.utc))
    row = await repo.get_campaign(campaign.id)
    assert not ok and row.status == "failed"
    assert "is not UTF-8 text at line 9002 " in row.last_error
    assert await rows(repo, "SELECT id FROM contacts WHERE campaign_id = :id", id=campaign.id) == []
