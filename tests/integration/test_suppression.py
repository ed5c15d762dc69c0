"""The do-not-call list: checked at ingestion and again right before each chunk is sent."""

import asyncio
import csv
from datetime import datetime, timezone

import pytest

from scheduler.export import write_export
from tests.support.harness import campaign, e164, rows, running_daemon, settings_for, simulator, valid_numbers, \
    wait_for, write_contacts

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


async def test_suppressed_before_ingestion_is_never_sent(repo, db_url, tmp_path):
    numbers = valid_numbers(25)
    banned = [e164(numbers[3]), e164(numbers[20]), e164(numbers[21]), e164(numbers[22]), e164(numbers[23]),
              e164(numbers[24])]
    await repo.add_suppressions(banned, "asked not to be called", "test", datetime.now(timezone.utc))
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(contacts, chunk_size=5))
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, row.id, FINAL)
    assert not set(banned) & set(sim.queued_numbers)
    assert set(sim.queued_numbers) == {e164(n) for n in numbers} - set(banned)
    suppressed = await rows(repo, "SELECT phone, reason FROM contacts WHERE status = 'suppressed'")
    assert {p for p, _ in suppressed} == set(banned)
    assert all(reason == "on the suppression list" for _, reason in suppressed)
    # the last chunk held only suppressed numbers: cancelled, never sent
    assert len(sim.requests) == 4
    assert await rows(repo, "SELECT status, contact_count FROM chunks WHERE seq = 4") == [("cancelled", 0)]
    assert done.contacts_queued == 19
    exported = await exported_rows(repo, row.id, tmp_path)
    assert {(r["normalised_number"], r["reason"]) for r in exported if r["contact_status"] == "suppressed"} == {
        (number, "on the suppression list") for number in banned}


async def exported_rows(repo, campaign_id, tmp_path):
    out = tmp_path / f"export-{campaign_id}.csv"
    await write_export(repo, campaign_id, out)
    return list(csv.DictReader(out.open(encoding="utf-8")))


async def test_a_number_suppressed_mid_campaign_is_taken_out_of_unsent_chunks(repo, db_url, tmp_path):
    numbers = valid_numbers(60)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    late = e164(numbers[55])
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url, rate_limit_per_second=4, max_concurrency=1)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            while len(sim.requests) < 1:
                await asyncio.sleep(0.05)
            await repo.add_suppressions([late], "asked during the campaign", "test", datetime.now(timezone.utc))
            done = await wait_for(repo, row.id, FINAL)
    assert late not in sim.queued_numbers
    assert len(sim.queued_numbers) == 59
    assert await rows(repo, "SELECT status FROM contacts WHERE phone = :p", p=late) == [("suppressed",)]
    assert done.status == "completed"
    last = next(r for r in sim.requests if any(n == e164(numbers[50]) for n in r.numbers))
    assert len(last.numbers) == 9  # the chunk went out without the suppressed number


async def test_frequency_cap_across_two_campaigns(repo, db_url, tmp_path):
    numbers = valid_numbers(30)
    first = write_contacts(tmp_path / "first.csv", numbers[:20])
    second = write_contacts(tmp_path / "second.csv", numbers[10:30])  # 10 numbers in common
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url)
        settings.contacts.min_hours_between_calls = 24
        a = await repo.create_campaign(campaign(first, name="first"))
        async with running_daemon(settings):
            await wait_for(repo, a.id, FINAL)
            b = await repo.create_campaign(campaign(second, name="second"))
            done = await wait_for(repo, b.id, FINAL)
    assert sim.stats()["numbers_queued_more_than_once"] == 0
    assert len(sim.queued_numbers) == 30
    capped = await rows(repo, "SELECT phone, reason FROM contacts WHERE campaign_id = :id AND "
                              "status = 'recently_contacted'", id=b.id)
    assert {p for p, _ in capped} == {e164(n) for n in numbers[10:20]}
    assert all("min_hours_between_calls" in reason for _, reason in capped)
    assert done.contacts_queued == 10
    exported = await exported_rows(repo, b.id, tmp_path)
    assert {r["normalised_number"] for r in exported if r["contact_status"] == "recently_contacted"} == {
        e164(n) for n in numbers[10:20]}


async def test_without_the_cap_the_same_number_may_be_called_by_two_campaigns(repo, db_url, tmp_path):
    numbers = valid_numbers(5)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url)
        a = await repo.create_campaign(campaign(contacts, name="a"))
        async with running_daemon(settings):
            await wait_for(repo, a.id, FINAL)
            b = await repo.create_campaign(campaign(contacts, name="b"))
            await wait_for(repo, b.id, FINAL)
    assert sim.stats()["contacts_queued"] == 10
    # Without the cap nothing is written there (it cost more than the rest of an answer's bookkeeping)
    assert await rows(repo, "SELECT count(*) FROM recent_calls") == [(0,)]


@pytest.mark.parametrize("how", ["restart", "sighup"])
async def test_a_cap_turned_on_later_knows_what_was_queued_while_it_was_off(repo, db_url, tmp_path, how):
    numbers = valid_numbers(30)
    first = write_contacts(tmp_path / "first.csv", numbers[:20])
    second = write_contacts(tmp_path / "second.csv", numbers[10:30])  # 10 numbers in common
    async with simulator() as sim:
        settings = settings_for(db_url, sim.base_url)
        a = await repo.create_campaign(campaign(first, name="first"))
        again = await repo.create_campaign(campaign(first, name="first again"))  # the same numbers twice
        async with running_daemon(settings) as daemon:  # no cap
            await wait_for(repo, a.id, FINAL)
            await wait_for(repo, again.id, FINAL)
            capped_settings = settings.model_copy(deep=True)
            capped_settings.contacts.min_hours_between_calls = 24
            if how == "sighup":
                daemon.apply_settings(capped_settings)  # what SIGHUP does with the new file
                b = await repo.create_campaign(campaign(second, name="second"))
                done = await wait_for(repo, b.id, FINAL)
        if how == "restart":
            async with running_daemon(capped_settings):
                b = await repo.create_campaign(campaign(second, name="second"))
                done = await wait_for(repo, b.id, FINAL)
    assert sim.stats()["contacts_queued"] == 20 + 20 + 10  # the first file twice (no cap then), then 10 new
    capped = await rows(repo, "SELECT phone FROM contacts WHERE campaign_id = :id AND status = 'recently_contacted'",
                        id=b.id)
    assert {p for p, in capped} == {e164(n) for n in numbers[10:20]}
    assert done.contacts_queued == 10
    recent = await rows(repo, "SELECT count(*), count(DISTINCT number) FROM recent_calls")
    assert recent == [(30, 30)]  # each number once, at its latest queueing
