"""Calling windows end to end: the real daemon with a clock the test sets, the simulator
over loopback, both databases. Chunks are grouped by time zone, sent a lead before
their window opens with that window as start/end_timestamp, held while paused, moved
to the next day's window when one closes unsent, and out_of_window when none is left."""

import asyncio
import csv
import random
from datetime import datetime, timezone

import phonenumbers

from rich.console import Console

from scheduler.export import write_export
from scheduler.models import CampaignStatus
from scheduler.phones import ZoneLookup
from scheduler.reports import print_report, report_as_dict
from tests.support.harness import campaign, execute, rows, running_daemon, settings_for, simulator, wait_for, write_contacts

UTC = timezone.utc
FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}
ZONE_OF = {"212": "America/New_York", "312": "America/Chicago", "213": "America/Los_Angeles",
           "808": "Pacific/Honolulu", "208": "America/Boise America/Los_Angeles"}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def numbers_in(area: str, count: int, seed: int) -> list[str]:
    rand = random.Random(seed)
    found: dict[str, None] = {}
    while len(found) < count:
        raw = f"{area}{rand.randint(200, 999)}{rand.randint(0, 9999):04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(raw, "US")) and (
                " ".join(ZoneLookup.lookup(f"+1{raw}")) == ZONE_OF[area]):
            found[raw] = None
    return list(found)


def window_settings(db_url: str, base_url: str, **contacts):
    settings = settings_for(db_url, base_url, chunk_size=4)
    settings.contacts.calling_window = "08:00-21:00"
    for key, value in contacts.items():
        setattr(settings.contacts, key, value)
    settings.scheduler.lead_seconds = 300
    return settings


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def until(condition, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def chunk_windows(repo, campaign_id):
    found = await rows(repo, "SELECT timezones, status, window_start_at, window_end_at, contact_count FROM chunks "
                             "WHERE campaign_id = :c ORDER BY seq", c=campaign_id)
    return [(zones, status, _utc(start), _utc(end), count) for zones, status, start, end, count in found]


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


async def test_chunks_per_zone_are_sent_a_lead_before_their_own_window(repo, db_url, tmp_path):
    numbers = (numbers_in("212", 6, 1) + numbers_in("312", 3, 2) + numbers_in("213", 2, 3)
               + numbers_in("808", 2, 4) + numbers_in("208", 2, 5))
    random.Random(9).shuffle(numbers)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    clock = Clock(at("2026-12-01 12:58"))  # 07:58 in New York
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(
            contacts, name="windows", start_at=at("2026-12-01 06:00"), end_at=at("2026-12-03 06:00")))
        async with running_daemon(window_settings(db_url, sim.base_url), clock=clock):
            await until(lambda: _ingested(repo, row.id))
            chunks = await chunk_windows(repo, row.id)
            by_zone = {}
            for zones, status, start, end, count in chunks:
                by_zone.setdefault(zones, []).append((start, end, count))
            assert {z: [(s, e) for s, e, _ in v] for z, v in by_zone.items()} == {
                "America/New_York": [(at("2026-12-01 13:05"), at("2026-12-02 02:00"))] * 2,  # 6 contacts, chunks of 4
                "America/Chicago": [(at("2026-12-01 14:05"), at("2026-12-02 03:00"))],
                "America/Los_Angeles": [(at("2026-12-01 16:05"), at("2026-12-02 05:00"))],
                "Pacific/Honolulu": [(at("2026-12-01 18:05"), at("2026-12-02 07:00"))],
                "America/Boise America/Los_Angeles": [(at("2026-12-01 16:05"), at("2026-12-02 04:00"))],
            }
            await asyncio.sleep(0.6)
            assert sim.requests == []  # 12:58: no window opens within the 5-minute lead

            clock.now = at("2026-12-01 13:01")  # New York opens at 13:05, within the lead
            await until(lambda: _sent(sim, 2))
            await asyncio.sleep(0.4)
            assert len(sim.requests) == 2
            for request in sim.requests:
                assert request.fields["start_timestamp"] == str(int(at("2026-12-01 13:05").timestamp()))
                assert request.fields["end_timestamp"] == str(int(at("2026-12-02 02:00").timestamp()))
                assert all(n.startswith("+1212") for n in request.numbers)

            # Paused through Chicago's whole window: nothing goes out, then the next day's window.
            await repo.change_status(row.id, CampaignStatus.PAUSED)
            clock.now = at("2026-12-01 14:06")
            await asyncio.sleep(0.6)
            assert len(sim.requests) == 2
            clock.now = at("2026-12-02 03:10")
            await until(lambda: _window_of(repo, row.id, "America/Chicago", at("2026-12-02 14:05")))
            await repo.change_status(row.id, CampaignStatus.SCHEDULED)  # resume
            # Los Angeles (until 05:00), Boise+LA (until 04:00) and Honolulu are open at 03:10: sent now.
            await until(lambda: _sent(sim, 5))
            await asyncio.sleep(0.4)
            assert len(sim.requests) == 5
            for request in sim.requests[2:]:
                assert request.fields["start_timestamp"] == str(int(clock.now.timestamp()))
                assert not any(n.startswith("+1312") for n in request.numbers)
            clock.now = at("2026-12-02 14:01")
            await until(lambda: _sent(sim, 6))
            chicago = sim.requests[5]
            assert all(n.startswith("+1312") for n in chicago.numbers)
            assert chicago.fields["start_timestamp"] == str(int(at("2026-12-02 14:05").timestamp()))
            assert chicago.fields["end_timestamp"] == str(int(at("2026-12-03 03:00").timestamp()))
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed"
    assert sorted(sim.queued_numbers) == sorted(f"+1{n}" for n in numbers)
    assert set(sim.queued_numbers.values()) == {1}
    await _shows_chunks_per_zone(repo, row.id)


async def _shows_chunks_per_zone(repo, campaign_id):
    """`campaign show` (and --json) list the chunks per zone set with their local windows."""
    report = await repo.campaign_report(campaign_id)
    zones = {tuple(z["zones"]): z for z in report_as_dict(report)["chunks_by_zone"]}
    new_york = zones[("America/New_York",)]
    assert (new_york["chunks"], new_york["contacts"], new_york["chunks_by_status"]) == (2, 6, {"succeeded": 2})
    assert new_york["local_windows"] == {"America/New_York": "Tue 2026-12-01 08:05-21:00 EST"}
    chicago = zones[("America/Chicago",)]
    assert chicago["local_windows"] == {"America/Chicago": "Wed 2026-12-02 08:05-21:00 CST"}  # the second day
    idaho = zones[("America/Boise", "America/Los_Angeles")]
    assert idaho["local_windows"]["America/Boise"].endswith("-21:00 MST")
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "chunks by time zone" in text and "America/Chicago: Wed 2026-12-02 08:05-21:00 CST" in text


async def test_contacts_with_no_window_left_are_out_of_window(repo, db_url, tmp_path):
    numbers = numbers_in("212", 3, 1) + numbers_in("808", 2, 4) + ["8005550199"]
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    clock = Clock(at("2026-12-01 06:00"))
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(
            contacts, name="short", start_at=at("2026-12-01 06:00"), end_at=at("2026-12-01 12:00")))  # ends before 08:00 in New York
        async with running_daemon(window_settings(db_url, sim.base_url), clock=clock):
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed"
    statuses = dict(await rows(repo, "SELECT phone, status FROM contacts WHERE campaign_id = :c", c=row.id))
    assert {p for p, s in statuses.items() if s == "out_of_window"} == {f"+1{n}" for n in numbers[:3]} | {
        "+18005550199"}
    assert sorted(sim.queued_numbers) == sorted(f"+1{n}" for n in numbers[3:5])
    request = sim.requests[0]  # Honolulu: 20:05-21:00 on Nov 30, local
    assert request.fields["start_timestamp"] == str(int(at("2026-12-01 06:05").timestamp()))
    assert request.fields["end_timestamp"] == str(int(at("2026-12-01 07:00").timestamp()))
    out = tmp_path / "export.csv"
    await write_export(repo, row.id, out)
    reasons = {r["normalised_number"]: r["reason"] for r in csv.DictReader(out.open(encoding="utf-8"))
               if r["contact_status"] == "out_of_window"}
    assert reasons[f"+1{numbers[0]}"] == "no calling window (08:00-21:00 local) open in America/New_York before end_at"
    assert "possible time zones" in reasons["+18005550199"]
    assert len(reasons) == 4


async def test_a_window_closing_with_no_next_one_expires_the_chunk(repo, db_url, tmp_path):
    numbers = numbers_in("212", 3, 1)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    clock = Clock(at("2026-12-01 12:00"))
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(
            contacts, name="paused too long", start_at=at("2026-12-01 06:00"), end_at=at("2026-12-02 12:00")))
        async with running_daemon(window_settings(db_url, sim.base_url), clock=clock):
            await until(lambda: _ingested(repo, row.id))
            await repo.change_status(row.id, CampaignStatus.PAUSED)
            clock.now = at("2026-12-02 02:30")  # New York's only window before end_at has closed
            await until(lambda: _chunk_status(repo, row.id, "expired"))
    assert sim.requests == []
    assert {s for (s,) in await rows(repo, "SELECT status FROM contacts")} == {"out_of_window"}


async def test_an_admins_edit_of_the_window_applies_to_unsent_chunks(repo, db_url, tmp_path):
    numbers = numbers_in("212", 3, 1)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    clock = Clock(at("2026-12-01 12:00"))
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(
            contacts, name="edited", start_at=at("2026-12-01 06:00"), end_at=at("2026-12-03 06:00")))
        async with running_daemon(window_settings(db_url, sim.base_url), clock=clock):
            await until(lambda: _window_of(repo, row.id, "America/New_York", at("2026-12-01 13:05")))
            # the admin narrows this campaign to 10:00-17:00 and excludes Tuesdays (Dec 1 is one)
            await execute(repo, "UPDATE campaigns SET calling_window_start = '10:00:00', calling_window_end = "
                                "'17:00:00', excluded_weekdays = 'Tuesday' WHERE id = :c", c=row.id)
            await until(lambda: _window_of(repo, row.id, "America/New_York", at("2026-12-02 15:05")))
            clock.now = at("2026-12-01 13:06")  # inside the old window
            await asyncio.sleep(0.6)
            assert sim.requests == []
            clock.now = at("2026-12-02 15:01")
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed"
    assert [(r.fields["start_timestamp"], r.fields["end_timestamp"]) for r in sim.requests] == [
        (str(int(at("2026-12-02 15:05").timestamp())), str(int(at("2026-12-02 22:00").timestamp())))]


async def test_campaign_timezone_policy_uses_one_zone_for_everyone(repo, db_url, tmp_path):
    numbers = numbers_in("212", 3, 1) + numbers_in("808", 3, 4)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    clock = Clock(at("2026-12-01 15:26"))  # 09:26 in Chicago (the window opens within the lead), 05:26 in Honolulu
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(
            contacts, name="one zone", start_at=at("2026-12-01 06:00"), end_at=at("2026-12-02 06:00"),
            calling_window_start="09:30", calling_window_end="17:00"))
        settings = window_settings(db_url, sim.base_url, campaign_timezone="America/Chicago",
                                   timezone_policy="campaign")
        async with running_daemon(settings, clock=clock):
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed"
    assert [(z, s) for z, s, *_ in await chunk_windows(repo, row.id)] == [("America/Chicago", "succeeded")] * 2
    assert {r.fields["start_timestamp"] for r in sim.requests} == {str(int(at("2026-12-01 15:30").timestamp()))}
    assert {r.fields["end_timestamp"] for r in sim.requests} == {str(int(at("2026-12-01 23:00").timestamp()))}


async def _ingested(repo, campaign_id) -> bool:
    return (await repo.get_campaign(campaign_id)).ingested_at is not None


async def _sent(sim, count) -> bool:
    return len([r for r in sim.requests if r.status == 200]) >= count


async def _window_of(repo, campaign_id, zones, start) -> bool:
    return any(z == zones and s == start for z, _, s, _, _ in await chunk_windows(repo, campaign_id))


async def _chunk_status(repo, campaign_id, status) -> bool:
    return all(s == status for _, s, *_ in await chunk_windows(repo, campaign_id))
