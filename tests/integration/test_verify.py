"""`campaign verify`: a campaign the daemon ran is consistent; each kind of corruption is named."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import pytest

from scheduler.cli import cmd_campaign_verify
from scheduler.errors import NotFound
from scheduler.ingest import ingest_campaign
from scheduler.verify import campaign_discrepancies
from tests.support.harness import (
    campaign,
    e164,
    execute,
    running_daemon,
    scalar,
    settings_for,
    simulator,
    valid_numbers,
    wait_for,
    write_contacts,
)

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}
SUCCEEDED_CHUNK = "(SELECT min(id) FROM chunks WHERE campaign_id = :id AND status = 'succeeded')"
ACCEPTED = f"(SELECT min(id) FROM submissions WHERE chunk_id = {SUCCEEDED_CHUNK} AND outcome = 'accepted')"
ONE_QUEUED = f"(SELECT min(id) FROM contacts WHERE chunk_id = {SUCCEEDED_CHUNK} AND status = 'queued')"

# (what is broken, corrupting SQL, SQL that undoes it, a fragment the report must contain)
CORRUPTIONS = [
    ("a queued contact set back to pending",
     [f"UPDATE contacts SET status = 'pending' WHERE id = {ONE_QUEUED}"],
     ["UPDATE contacts SET status = 'queued' WHERE status = 'pending' AND campaign_id = :id"],
     ["1 contacts are pending in succeeded chunks", "but 39 contacts rows are queued"]),
    ("a counter bumped",
     ["UPDATE campaigns SET chunks_failed = chunks_failed + 2 WHERE id = :id"],
     ["UPDATE campaigns SET chunks_failed = chunks_failed - 2 WHERE id = :id"],
     ["chunks_failed is 2 but 0 chunks are failed"]),
    ("contacts_total off by one",
     ["UPDATE campaigns SET contacts_total = contacts_total + 1 WHERE id = :id"],
     ["UPDATE campaigns SET contacts_total = contacts_total - 1 WHERE id = :id"],
     ["contacts_total is 43 but contacts rows by status sum to 42 (duplicate 1, invalid 1, queued 40)"]),
    ("an accepted submission deleted",
     [f"DELETE FROM submissions WHERE id = {ACCEPTED}"],
     ["INSERT INTO submissions (campaign_id, chunk_id, attempt, worker, started_at, outcome, contact_count) "
      "SELECT campaign_id, id, attempts, 'test', created_at, 'accepted', contact_count FROM chunks c "
      "WHERE campaign_id = :id AND status = 'succeeded' AND NOT EXISTS "
      "(SELECT 1 FROM submissions s WHERE s.chunk_id = c.id AND s.outcome = 'accepted')"],
     ["chunks are succeeded without an accepted submission", "chunks have fewer submission rows"]),
    ("a queued contact taken out of its chunk",
     [f"UPDATE contacts SET chunk_id = -chunk_id WHERE id = {ONE_QUEUED}"],
     ["UPDATE contacts SET chunk_id = -chunk_id WHERE chunk_id < 0"],
     ["1 contacts point at a chunk_id that is no chunk of this campaign",
      "chunks' contact_count differs from the contacts they hold"]),
    ("a chunk reopened in a completed campaign",
     [f"UPDATE contacts SET status = 'pending' WHERE chunk_id = {SUCCEEDED_CHUNK}",
      f"UPDATE chunks SET status = 'pending' WHERE id = {SUCCEEDED_CHUNK}"],
     ["UPDATE chunks SET status = 'succeeded' WHERE status = 'pending' AND campaign_id = :id",
      "UPDATE contacts SET status = 'queued' WHERE status = 'pending' AND campaign_id = :id"],
     ["campaign is completed but 1 chunks are still open (pending 1), holding 10 pending contacts",
      "chunks_pending is 0 but 1 chunks are pending or submitting"]),
    ("a submission left sending",
     [f"UPDATE submissions SET outcome = 'sending' WHERE id = {ACCEPTED}"],
     ["UPDATE submissions SET outcome = 'accepted' WHERE outcome = 'sending' AND campaign_id = :id"],
     ["chunks are not submitting but have a 'sending' submission"]),
]


async def verify(repo, campaign_id: int, settled: bool | None = None) -> list[str]:
    return await repo._ledger(campaign_discrepancies, campaign_id, settled, read_only=True)


async def run_to_the_end(repo, db_url, tmp_path, **sim_settings):
    """One clean campaign (40 queued after retries) and one with a refused number (splits, rejected)."""
    numbers = valid_numbers(50, seed=3)
    clean = write_contacts(tmp_path / "clean.csv", numbers[:40] + ["12345", numbers[0]])
    refused = write_contacts(tmp_path / "refused.csv", numbers[40:])
    async with simulator(reject_numbers=[e164(numbers[45])], **sim_settings) as sim:
        settings = settings_for(db_url, sim.base_url, max_rejections_without_success=0,
                                retry=dict(max_tries=10, initial_backoff_seconds=0.05, max_backoff_seconds=0.2))
        first = await repo.create_campaign(campaign(clean))
        second = await repo.create_campaign(campaign(refused))
        async with running_daemon(settings):
            done = [await wait_for(repo, row.id, FINAL) for row in (first, second)]
    return settings, done


async def test_campaigns_the_daemon_ran_are_consistent_and_each_corruption_is_named(repo, db_url, tmp_path):
    settings, (done, refused) = await run_to_the_end(repo, db_url, tmp_path, fail_rate=0.2)
    assert (done.status, refused.status) == ("completed", "completed_with_errors"), refused.last_error
    assert await scalar(repo, "SELECT count(*) FROM chunks WHERE status = 'split'") > 0
    assert await verify(repo, done.id) == []
    assert await verify(repo, refused.id) == []
    for name, corrupt, undo, expected in CORRUPTIONS:
        for sql in corrupt:
            await execute(repo, sql, id=done.id)
        found = await verify(repo, done.id)
        for fragment in expected:
            assert any(fragment in line for line in found), (name, fragment, found)
        for sql in undo:
            await execute(repo, sql, id=done.id)
        assert await verify(repo, done.id) == [], (name, "left behind")


async def test_the_command_exits_0_when_consistent_and_1_listing_each_discrepancy(repo, db_url, tmp_path, capsys):
    settings, (done, _) = await run_to_the_end(repo, db_url, tmp_path)
    capsys.readouterr()
    assert await cmd_campaign_verify(argparse.Namespace(id=done.id), settings) == 0
    assert capsys.readouterr().out == (
        f"campaign {done.id}: consistent (completed; 42 contacts (duplicate 1, invalid 1, queued 40); "
        "4 chunks (succeeded 4); 4 submissions)\n")
    await execute(repo, "UPDATE campaigns SET contacts_valid = 7, chunks_succeeded = 3 WHERE id = :id", id=done.id)
    assert await cmd_campaign_verify(argparse.Namespace(id=done.id), settings) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  contacts_valid is 7 but 40 contacts rows are neither invalid nor duplicate",
        "  chunks_succeeded is 3 but 4 chunks are succeeded",
    ]


async def test_counters_of_a_running_campaign_are_compared_only_when_asked(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(25))
    settings = settings_for(db_url, "http://127.0.0.1:9")
    row = await repo.claim_campaign((await repo.create_campaign(campaign(contacts))).id, "w", _now(), _now())
    assert await ingest_campaign(repo, row, settings, "w", _now)
    await execute(repo, "UPDATE campaigns SET chunks_failed = 5 WHERE id = :id", id=row.id)
    assert await verify(repo, row.id) == []
    assert await verify(repo, row.id, settled=True) == ["chunks_failed is 5 but 0 chunks are failed"]


async def test_a_campaign_not_yet_ingested_has_nothing_to_check_and_a_missing_one_is_not_found(repo, tmp_path):
    row = await repo.create_campaign(campaign(tmp_path / "none.csv"))
    assert await verify(repo, row.id) == []
    with pytest.raises(NotFound, match="no campaign with id 999"):
        await verify(repo, 999)


def _now() -> datetime:
    return datetime.now(timezone.utc)
