"""The ledger driven directly (no HTTP, no daemon), on SQLite and PostgreSQL: claim, then
each kind of answer; and every way a campaign is stopped ends in the same state."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from scheduler.config import Settings
from scheduler.ingest import ingest_campaign
from scheduler.insight import SubmitResult
from scheduler.ledger import ClaimTimes
from scheduler.models import CampaignStatus, Outcome
from scheduler.retry import NextStep, Step
from tests.support.harness import campaign, claim_for_ingestion, execute, rows, valid_numbers, write_contacts

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def times(now: datetime = NOW) -> ClaimTimes:
    return ClaimTimes(now=now, lease_until=now + timedelta(minutes=2), opens_by=now, open_until=now)


async def ingested(repo, tmp_path, count: int = 30):
    """A running campaign of `count` contacts in chunks of 10, nothing sent."""
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(count))
    row = await claim_for_ingestion(repo, await repo.create_campaign(campaign(contacts, chunk_size=10)))
    assert await ingest_campaign(repo, row, Settings(), "w", lambda: NOW)
    return row


async def statuses(repo, campaign_id: int) -> tuple[dict[str, int], dict[str, int]]:
    chunks = dict(await rows(repo, "SELECT status, count(*) FROM chunks WHERE campaign_id = :id GROUP BY status",
                             id=campaign_id))
    contacts = dict(await rows(repo, "SELECT status, count(*) FROM contacts WHERE campaign_id = :id "
                                     "GROUP BY status", id=campaign_id))
    return chunks, contacts


RESULT = {
    Step.SUCCEEDED: SubmitResult(Outcome.ACCEPTED, 200, None, "{}", 0.01),
    Step.RETRY: SubmitResult(Outcome.RETRYABLE, 500, "boom", None, 0.01),
    Step.FAILED: SubmitResult(Outcome.RETRYABLE, 500, "boom", None, 0.01),
    Step.SPLIT: SubmitResult(Outcome.REJECTED, 400, "bad row", None, 0.01),
    Step.REJECTED: SubmitResult(Outcome.REJECTED, 400, "bad row", None, 0.01),
    Step.UNKNOWN: SubmitResult(Outcome.UNKNOWN, None, "read timeout", None, 0.01),
    Step.PAUSE_CAMPAIGN: SubmitResult(Outcome.AUTH, 403, "forbidden", None, 0.01),
    Step.FAIL_CAMPAIGN: SubmitResult(Outcome.CAMPAIGN_INVALID, 404, "no survey", None, 0.01),
}

# step -> (chunk statuses, contact statuses, campaign status) after one answer to the first chunk
EXPECTED = {
    Step.SUCCEEDED: ({"succeeded": 1, "pending": 2}, {"queued": 10, "pending": 20}, "running"),
    Step.RETRY: ({"pending": 3}, {"pending": 30}, "running"),
    Step.FAILED: ({"failed": 1, "pending": 2}, {"failed": 10, "pending": 20}, "running"),
    Step.SPLIT: ({"split": 1, "pending": 4}, {"pending": 30}, "running"),
    Step.REJECTED: ({"rejected": 1, "pending": 2}, {"rejected": 10, "pending": 20}, "running"),
    Step.UNKNOWN: ({"unknown": 1, "pending": 2}, {"unknown": 10, "pending": 20}, "running"),
    Step.PAUSE_CAMPAIGN: ({"pending": 3}, {"pending": 30}, "paused"),
    # failed: its unsent chunks are cancelled by the next housekeeping
    Step.FAIL_CAMPAIGN: ({"cancelled": 3}, {"cancelled": 30}, "failed"),
}


@pytest.mark.parametrize("step", list(EXPECTED), ids=lambda s: s.value)
async def test_claim_then_each_answer(step, repo, tmp_path):
    row = await ingested(repo, tmp_path)
    claim = await repo.claim_next_chunk("w", times())
    assert claim is not None and (claim.seq, claim.attempt, claim.contact_count) == (0, 1, 10)
    assert (await statuses(repo, row.id))[0] == {"submitting": 1, "pending": 2}
    plan = NextStep(step, retry_at=NOW + timedelta(seconds=5) if step is Step.RETRY else None, message="why")
    applied = await repo.record_outcome(claim, "w", RESULT[step], plan, NOW)
    assert applied == plan  # the step stored is the one returned (and logged)
    await repo.housekeeping(NOW)
    chunks, contacts, status = EXPECTED[step]
    assert await statuses(repo, row.id) == (chunks, contacts)
    assert (await repo.get_campaign(row.id)).status == status
    outcomes = await rows(repo, "SELECT outcome, status_code FROM submissions WHERE campaign_id = :id", id=row.id)
    assert outcomes == [(RESULT[step].outcome.value, RESULT[step].status_code)]


async def test_a_claim_another_daemon_took_over_is_not_written(repo, tmp_path):
    row = await ingested(repo, tmp_path, count=10)
    claim = await repo.claim_next_chunk("w", times())
    # as if it had been declared unknown, resent, and claimed by another daemon since
    await execute(repo, "UPDATE chunks SET lease_owner = 'other', claim_token = claim_token + 1 WHERE id = :id",
                  id=claim.chunk_id)
    applied = await repo.record_outcome(claim, "w", RESULT[Step.SUCCEEDED], NextStep(Step.SUCCEEDED), NOW)
    assert applied is None
    assert (await statuses(repo, row.id))[0] == {"submitting": 1}


async def test_the_same_daemons_stale_claim_is_fenced_by_the_token(repo, tmp_path):
    """Found by the state machine: daemon a's first claim answered after a's second claim of
    the same chunk (declared unknown and resent in between) once wrote over the second."""
    row = await ingested(repo, tmp_path, count=20)  # a second chunk keeps the campaign running
    first = await repo.claim_next_chunk("a", times())
    await repo.abandon_submitting(NOW, NOW, also_dead={"a"})
    await repo.resend_chunks(row.id, None, NOW)
    second = await repo.claim_next_chunk("a", times())
    assert (first.token, second.token) == (1, 2)
    assert await repo.record_outcome(first, "a", RESULT[Step.SUCCEEDED], NextStep(Step.SUCCEEDED), NOW) is None
    assert await repo.record_outcome(second, "a", RESULT[Step.SUCCEEDED], NextStep(Step.SUCCEEDED), NOW)
    assert await repo.verify_campaign(row.id) == []


@pytest.mark.parametrize("then", ["resend", "cancel"])
async def test_a_late_acceptance_after_a_resend_or_cancel_is_the_truth(then, repo, tmp_path):
    row = await ingested(repo, tmp_path, count=20)
    claim = await repo.claim_next_chunk("a", times())
    await repo.abandon_submitting(NOW, NOW, also_dead={"a"})
    await repo.resend_chunks(row.id, None, NOW)
    if then == "cancel":
        await repo.change_status(row.id, CampaignStatus.CANCELLED)
    applied = await repo.record_outcome(claim, "a", RESULT[Step.SUCCEEDED], NextStep(Step.SUCCEEDED), NOW)
    assert applied is not None and applied.step is Step.SUCCEEDED
    closed = "cancelled" if then == "cancel" else "pending"
    assert await statuses(repo, row.id) == ({"succeeded": 1, closed: 1}, {"queued": 10, closed: 10})
    assert await repo.verify_campaign(row.id) == []


async def test_a_late_answer_for_an_unknown_chunk_moves_its_contacts_too(repo, tmp_path):
    row = await ingested(repo, tmp_path, count=10)
    claim = await repo.claim_next_chunk("w", times())
    assert await repo.abandon_submitting(NOW, NOW, also_dead={"w"}) == 1  # its daemon was thought dead
    assert await statuses(repo, row.id) == ({"unknown": 1}, {"unknown": 10})
    await repo.record_outcome(claim, "w", RESULT[Step.SUCCEEDED], NextStep(Step.SUCCEEDED), NOW)
    assert await statuses(repo, row.id) == ({"succeeded": 1}, {"queued": 10})


STOPS = ["cli_cancel", "sql_cancelled", "sql_completed", "end_at_passed", "row_unusable"]


async def _stop(how: str, repo, campaign_id: int) -> None:
    if how == "cli_cancel":
        await repo.change_status(campaign_id, CampaignStatus.CANCELLED)
    elif how == "row_unusable":
        await repo.fail_campaign(campaign_id, "invalid campaign row: max_attempts", NOW)
    elif how == "end_at_passed":
        past = (NOW - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S+00:00")
        await execute(repo, f"UPDATE campaigns SET end_at = '{past}' WHERE id = :id", id=campaign_id)
    else:
        await execute(repo, f"UPDATE campaigns SET status = '{how[4:]}' WHERE id = :id", id=campaign_id)
    await repo.housekeeping(NOW)


@pytest.mark.parametrize("how", STOPS)
async def test_every_way_of_stopping_settles_every_unsent_contact(how, repo, tmp_path):
    row = await ingested(repo, tmp_path)
    claim = await repo.claim_next_chunk("w", times())
    await repo.record_outcome(claim, "w", RESULT[Step.SUCCEEDED], NextStep(Step.SUCCEEDED), NOW)
    await _stop(how, repo, row.id)
    closed = "expired" if how == "end_at_passed" else "cancelled"
    assert await statuses(repo, row.id) == ({"succeeded": 1, closed: 2}, {"queued": 10, closed: 20})
    done = await repo.get_campaign(row.id)
    assert (done.chunks_succeeded, done.contacts_queued, done.chunks_pending) == (1, 10, 0)
    assert await repo.claim_next_chunk("w", times()) is None


async def test_a_late_retry_after_an_outage_reopens_the_campaign_it_would_have_finished(repo, tmp_path):
    """The database was down longer than 3 polls: the one chunk out was declared unknown and the
    campaign finished as completed_with_errors; then the daemon wrote Plum's answer, a 500.
    The chunk must be sent again, not cancelled with the finished campaign."""
    row = await ingested(repo, tmp_path, count=10)
    claim = await repo.claim_next_chunk("w", times())
    assert await repo.abandon_submitting(NOW, NOW, also_dead={"w"}) == 1
    assert (await repo.get_campaign(row.id)).status == "completed_with_errors"
    plan = NextStep(Step.RETRY, NOW, "HTTP 500")
    assert await repo.record_outcome(claim, "w", RESULT[Step.RETRY], plan, NOW) == plan
    await repo.housekeeping(NOW)
    assert (await repo.get_campaign(row.id)).status == "running"
    assert await statuses(repo, row.id) == ({"pending": 1}, {"pending": 10})
    again = await repo.claim_next_chunk("w", times(NOW + timedelta(seconds=1)))
    await repo.record_outcome(again, "w", RESULT[Step.SUCCEEDED], NextStep(Step.SUCCEEDED), NOW)
    assert (await repo.get_campaign(row.id)).status == "completed"
    assert await repo.verify_campaign(row.id) == []


async def test_a_live_daemons_claim_outlives_its_lease(repo, tmp_path):
    """A live daemon keeps its claim however long its answer takes to be written."""
    await repo.register_worker("w", NOW, "h", 1, "t")
    await ingested(repo, tmp_path, count=10)
    await repo.claim_next_chunk("w", times())
    later = NOW + timedelta(minutes=10)  # lease (2 min) long gone, the daemon still beats
    await repo.heartbeat("w", later)
    assert await repo.abandon_submitting(later, later - timedelta(seconds=15)) == 0
    assert await repo.abandon_submitting(later + timedelta(seconds=20), later + timedelta(seconds=5)) == 1
