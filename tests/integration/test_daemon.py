"""The daemon against the simulator over loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from tests.support.harness import (
    campaign,
    e164,
    execute,
    rows,
    running_daemon,
    scalar,
    settings_for,
    simulator,
    valid_numbers,
    wait_for,
    write_contacts,
)

from scheduler.models import CampaignStatus

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


async def test_happy_path_with_500s_queues_every_number_exactly_once(repo, db_url, tmp_path):
    numbers = valid_numbers(230)
    contacts = write_contacts(tmp_path / "c.csv", numbers + ["12345", numbers[0]])
    async with simulator(fail_rate=0.2) as sim:
        settings = settings_for(db_url, sim.base_url, chunk_size=25, rate_limit_per_second=40, max_concurrency=3,
                                retry=dict(max_tries=10, initial_backoff_seconds=0.05, max_backoff_seconds=0.2))
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL)
        stats = sim.stats()
    assert done.status == "completed", done.last_error
    assert (done.contacts_total, done.contacts_valid, done.contacts_invalid, done.contacts_duplicate) == (232, 230, 1, 1)
    assert done.contacts_queued == 230
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers})
    assert stats["numbers_queued_more_than_once"] == 0
    assert stats["largest_chunk"] == 25
    assert stats["max_in_flight"] <= 3
    assert stats["max_started_in_one_second"] <= 40
    assert stats["by_status"].get("500", 0) > 0
    recorded = dict(await rows(repo, "SELECT status_code, count(*) FROM submissions GROUP BY status_code"))
    assert sum(recorded.values()) == stats["requests"]
    assert recorded.get(500, 0) == stats["by_status"]["500"]
    assert recorded[200] == stats["by_status"]["200"] == 10
    assert await scalar(repo, "SELECT count(*) FROM submissions WHERE outcome = 'sending'") == 0
    # file order kept: chunk seq 0 holds the first 25 valid rows
    first = await rows(repo, "SELECT phone FROM contacts WHERE chunk_id = (SELECT id FROM chunks WHERE seq = 0) "
                             "ORDER BY row_number")
    assert [p for (p,) in first] == [e164(n) for n in numbers[:25]]
    # the other columns travel after the phone column, values intact
    sent = next(r for r in sim.requests if r.status == 200)
    assert sent.csv_text.splitlines()[0] == "phone_number,name"
    assert '"Zoë, ""' in sent.csv_text


async def test_a_bad_row_fails_the_campaign_and_sends_nothing(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(5))
    async with simulator() as sim:
        bad = await repo.create_campaign(campaign(contacts, max_attempts=11))
        no_wait = await repo.create_campaign(campaign(contacts, max_attempts=3, reattempt_wait=None))
        async with running_daemon(settings_for(db_url, sim.base_url)):
            failed = await wait_for(repo, bad.id, FINAL)
            failed2 = await wait_for(repo, no_wait.id, FINAL)
        assert sim.requests == []
    assert failed.status == "failed"
    assert "max_attempts: must be an integer between 1 and 10 (got 11)" in failed.last_error
    assert failed2.status == "failed" and "reattempt_wait: required when max_attempts > 1" in failed2.last_error


async def test_unusable_files_fail_with_an_actionable_message_and_others_go_on(repo, db_url, tmp_path):
    good = write_contacts(tmp_path / "good.csv", valid_numbers(12))
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    header_only = tmp_path / "header.csv"
    header_only.write_text("phone_number,name\n")
    phoneless = tmp_path / "phoneless.csv"
    phoneless.write_text("name,email\nAnn,a@example.com\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases = {
        str(tmp_path / "missing.csv"): "does not exist",
        str(binary): "is binary",
        str(header_only): "has a header row (phone_number, name) but no contacts",
        str(phoneless): "has no phone column: looked for phone_number, destination, phone, number "
                        "(case-insensitive), found header 'name', 'email'",
        str(empty): "is empty",
    }
    async with simulator() as sim:
        ids = {path: (await repo.create_campaign(campaign(path))).id for path in cases}
        ok = await repo.create_campaign(campaign(good))
        async with running_daemon(settings_for(db_url, sim.base_url)):
            for path, message in cases.items():
                row = await wait_for(repo, ids[path], FINAL)
                assert row.status == "failed"
                assert path in row.last_error and message in row.last_error, row.last_error
            assert (await wait_for(repo, ok.id, FINAL)).status == "completed"
    assert await scalar(repo, "SELECT count(*) FROM contacts WHERE campaign_id != :id", id=ok.id) == 0


async def test_pause_and_resume_by_editing_the_row(repo, db_url, tmp_path):
    numbers = valid_numbers(200)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url, rate_limit_per_second=10, max_concurrency=1)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            while len(sim.requests) < 3:
                await asyncio.sleep(0.05)
            await execute(repo, "UPDATE campaigns SET status = 'paused' WHERE id = :id", id=row.id)
            paused_at = time.time()
            await asyncio.sleep(1.3)  # several poll intervals
            # a claim is made at most CLAIM_LEAD_SECONDS before its request leaves, so a request
            # claimed just before the pause may still start within that much after it
            late = [r.started - paused_at for r in sim.requests if r.started > paused_at + 0.3]
            assert late == [], "requests kept starting while paused"
            assert (await repo.get_campaign(row.id)).status == "paused"
            before_resume = len(sim.requests)
            await execute(repo, "UPDATE campaigns SET status = 'scheduled' WHERE id = :id", id=row.id)
            done = await wait_for(repo, row.id, FINAL)
        assert len(sim.requests) > before_resume
    assert done.status == "completed"
    assert sim.stats()["numbers_queued_more_than_once"] == 0
    assert sim.stats()["contacts_queued"] == 200


async def test_cancel_marks_unsent_chunks_cancelled(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(200))
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url, rate_limit_per_second=5, max_concurrency=1)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            while len(sim.requests) < 2:
                await asyncio.sleep(0.05)
            await execute(repo, "UPDATE campaigns SET status = 'cancelled' WHERE id = :id", id=row.id)
            await asyncio.sleep(0.8)
            sent = len(sim.requests)
            await asyncio.sleep(0.5)
            assert len(sim.requests) == sent
    statuses = dict(await rows(repo, "SELECT status, count(*) FROM chunks GROUP BY status"))
    assert statuses["cancelled"] >= 15
    assert statuses.get("pending", 0) == 0
    assert statuses["succeeded"] == sent
    contact_statuses = dict(await rows(repo, "SELECT status, count(*) FROM contacts GROUP BY status"))
    assert contact_statuses["cancelled"] == statuses["cancelled"] * 10
    assert (await repo.get_campaign(row.id)).chunks_cancelled == statuses["cancelled"]


async def test_a_future_campaign_is_left_alone(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(5))
    async with simulator() as sim:
        later = datetime.now(timezone.utc) + timedelta(hours=2)
        row = await repo.create_campaign(campaign(contacts, start_at=later, end_at=later + timedelta(hours=1)))
        async with running_daemon(settings_for(db_url, sim.base_url)):
            await asyncio.sleep(0.8)
        assert sim.requests == []
    assert (await repo.get_campaign(row.id)).status == "scheduled"
    assert await scalar(repo, "SELECT count(*) FROM contacts") == 0


async def test_401_pauses_everything_until_the_key_is_fixed(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(60))
    async with simulator() as sim:
        wrong = settings_for(db_url, sim.base_url).model_copy(deep=True)
        wrong.insight.developer_key = "wrong-key"  # type: ignore[assignment]
        a = await repo.create_campaign(campaign(contacts, name="a"))
        b = await repo.create_campaign(campaign(contacts, name="b"))
        async with running_daemon(wrong) as daemon:
            paused = await wait_for(repo, a.id, {"paused"})
            await wait_for(repo, b.id, {"paused"})
            await asyncio.sleep(0.5)
            assert {r.status for r in sim.requests} == {401}
            attempts_while_paused = len(sim.requests)
            await asyncio.sleep(0.5)
            assert len(sim.requests) == attempts_while_paused, "kept sending with a bad key"
            assert "HTTP 401" in paused.last_error and "developer_key" in paused.last_error
            assert await scalar(repo, "SELECT max(attempts) FROM chunks") == 0  # nothing consumed
            daemon.apply_settings(settings_for(db_url, sim.base_url))  # the admin fixed the key (SIGHUP)
            await execute(repo, "UPDATE campaigns SET status = 'scheduled'")
            assert (await wait_for(repo, a.id, FINAL)).status == "completed"
            assert (await wait_for(repo, b.id, FINAL)).status == "completed"
    assert sim.stats()["contacts_queued"] == 120
    assert sim.stats()["distinct_numbers_queued"] == 60  # the same list in two campaigns


async def test_404_and_409_fail_their_campaign_quickly_and_others_go_on(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(40))
    async with simulator(surveys={"77": "3", "88": "1"}) as sim:
        missing = await repo.create_campaign(campaign(contacts, survey_id="404"))
        stale = await repo.create_campaign(campaign(contacts, survey_id="88", instance_id="0"))
        fine = await repo.create_campaign(campaign(contacts))
        # one request at a time: a second request of a failed campaign could only start after the answer
        async with running_daemon(settings_for(db_url, sim.base_url, max_concurrency=1)):
            a = await wait_for(repo, missing.id, FINAL, timeout=5)
            b = await wait_for(repo, stale.id, FINAL, timeout=5)
            c = await wait_for(repo, fine.id, FINAL)
    assert a.status == "failed" and "HTTP 404" in a.last_error and "survey was not found" in a.last_error
    assert b.status == "failed" and "HTTP 409" in b.last_error and "current deployment" in b.last_error
    assert c.status == "completed"
    per_survey = Counter(r.survey_id for r in sim.requests)
    assert per_survey["404"] == 1 and per_survey["88"] == 1  # no new request after the first answer


async def test_400_on_some_rows_rejects_only_those_rows(repo, db_url, tmp_path):
    numbers = valid_numbers(40)
    bad = {e164(numbers[5]), e164(numbers[31])}
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator(reject_numbers=sorted(bad)) as sim:
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings_for(db_url, sim.base_url, chunk_size=16)):
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed_with_errors"
    rejected = await rows(repo, "SELECT phone, reason FROM contacts WHERE status = 'rejected'")
    assert {phone for phone, _ in rejected} == bad
    assert all("invalid phone number" in reason for _, reason in rejected)
    assert set(sim.queued_numbers) == {e164(n) for n in numbers} - bad
    assert sim.stats()["numbers_queued_more_than_once"] == 0
    assert done.contacts_queued == 38


async def test_a_campaign_plum_refuses_request_after_request_is_paused_not_split_forever(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(64))
    body = "{'success':false,'error':'uploaded CSV was invalid'}"
    async with simulator(fixed_status=400, fixed_body=body) as sim:
        settings = settings_for(db_url, sim.base_url, chunk_size=16, max_concurrency=1,
                                max_rejections_without_success=6)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            paused = await wait_for(repo, row.id, {"paused"})
            await asyncio.sleep(0.5)
            # without the stop: 4 chunks of 16 split down to single rows, ~124 requests
            assert len(sim.requests) == 6
            assert "refused the first 6 requests" in paused.last_error
            assert "uploaded CSV was invalid" in paused.last_error
            assert await scalar(repo, "SELECT count(*) FROM contacts WHERE status = 'rejected'") == 0
            # the admin fixes the cause and resumes: splitting resumes where it stopped, nothing lost
            sim.settings.fixed_status = None
            await repo.change_status(row.id, CampaignStatus.SCHEDULED)
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed"
    assert done.contacts_queued == 64
    assert sim.stats()["numbers_queued_more_than_once"] == 0


async def test_unknown_outcome_is_never_resent_until_an_admin_decides(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(30))
    async with simulator(drop_rate=1.0) as sim:
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, row.id, FINAL)
            assert done.status == "completed_with_errors"
            assert done.chunks_unknown == 3
            assert len(sim.requests) == 3
            sim.settings.drop_rate = 0.0
            assert await repo.resend_chunks(row.id, None, datetime.now(timezone.utc)) == 3
            again = await wait_for(repo, row.id, FINAL)
    assert again.status == "completed"
    assert len(sim.requests) == 6
    assert sim.stats()["numbers_queued_more_than_once"] == 30  # the admin chose to resend: Plum had them


async def test_retry_backoff_is_stored_in_the_database(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(5))
    async with simulator(fail_first=1) as sim:
        settings = settings_for(db_url, sim.base_url, retry=dict(max_tries=3, initial_backoff_seconds=30,
                                                                  max_backoff_seconds=60))
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            while not sim.requests:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        chunk = (await rows(repo, "SELECT status, attempts, next_attempt_at, last_error FROM chunks"))[0]
    assert chunk[0] == "pending" and chunk[1] == 1
    assert chunk[2] is not None and "HTTP 500" in chunk[3]
    assert (await repo.get_campaign(row.id)).status == "running"


async def test_giving_up_after_max_tries_fails_the_chunk(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(5))
    async with simulator(fail_rate=1.0) as sim:
        settings = settings_for(db_url, sim.base_url, retry=dict(max_tries=3, initial_backoff_seconds=0.01,
                                                                  max_backoff_seconds=0.02))
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed_with_errors"
    assert len(sim.requests) == 3
    assert await scalar(repo, "SELECT status FROM chunks") == "failed"
    assert await scalar(repo, "SELECT count(*) FROM contacts WHERE status = 'failed'") == 5


async def test_small_campaign_is_not_starved_behind_a_large_one(repo, db_url, tmp_path):
    big = write_contacts(tmp_path / "big.csv", valid_numbers(400, seed=2))
    small = write_contacts(tmp_path / "small.csv", valid_numbers(20, seed=3))
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url, rate_limit_per_second=20, max_concurrency=1)
        b = await repo.create_campaign(campaign(big, name="big"))
        s = await repo.create_campaign(campaign(small, name="small", survey_id="88"))
        async with running_daemon(settings):
            await wait_for(repo, s.id, FINAL)
            big_row = await repo.get_campaign(b.id)
    assert big_row.status == "running", "the small campaign should finish long before the big one"


async def test_chunks_unsent_at_end_at_expire(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(100))
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url, rate_limit_per_second=2, max_concurrency=1)
        now = datetime.now(timezone.utc)
        row = await repo.create_campaign(campaign(contacts, end_at=now + timedelta(seconds=4)))
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL, timeout=10)
        sent = len(sim.requests)
    assert done.status == "completed_with_errors"
    assert 0 < sent < 10
    assert done.chunks_expired == 10 - sent
    assert "expired" in done.last_error
    assert await scalar(repo, "SELECT count(*) FROM contacts WHERE status = 'expired'") == (10 - sent) * 10
    # every request carried the campaign's end as end_timestamp
    assert {r.fields["end_timestamp"] for r in sim.requests} == {str(int(row.end_at.timestamp()))}


async def test_requests_that_left_together_are_spread_out_once_answers_come(repo, db_url, tmp_path):
    """Answers of requests that left together come back together and queue in the daemon's
    loop, round after round: after the first round, requests are spaced by half an answer's
    time over the places in flight (ratelimit.AnswerSpacing), far more than the rate asks."""
    numbers = valid_numbers(400, seed=11)
    async with simulator(latency_mean_seconds=0.16) as sim:
        row = await repo.create_campaign(campaign(write_contacts(tmp_path / "c.csv", numbers)))
        settings = settings_for(db_url, sim.base_url, max_concurrency=8, rate_limit_per_second=1000)
        async with running_daemon(settings):
            done = await wait_for(repo, row.id, FINAL)
        starts = sorted(r.started for r in sim.requests)
        queued = Counter(n for r in sim.requests for n in r.numbers)
    assert done.status == "completed"
    assert sorted(queued) == sorted(e164(n) for n in numbers) and set(queued.values()) == {1}
    assert len(starts) == 40
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # the first round, before any answer, goes at once (the rate's interval is ~1 ms)
    assert max(gaps[:7]) < 0.005
    # from the first answer on: 0.16 s / (2 x 8) = 10 ms apart. The simulator shares this loop,
    # so one late arrival stamp shortens the next gap: most gaps, not every one
    later = sorted(gaps[7:])
    assert later[len(later) // 5] > 0.007, gaps
