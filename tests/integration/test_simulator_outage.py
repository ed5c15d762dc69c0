"""The simulator's outage: one window of error answers, then recovery (real aiohttp client on loopback)."""

import asyncio
import base64
import time

import aiohttp
import pytest

from scheduler.simulator import InsightSimulator, SimulatorSettings

CSV = b"phone_number,name\n+16175551234,A\n+16175551235,B\n"
AUTH = "Basic " + base64.b64encode(b"you@yourdomain.com:").decode()


async def post(session, base_url, auth=AUTH, accept=None):
    form = aiohttp.FormData()
    form.add_field("csv", CSV, filename="c.csv", content_type="text/csv")
    headers = {"Authorization": auth}
    if accept:
        headers["Accept"] = accept
    async with session.post(f"{base_url}/surveys/1/2/bulk_queue", data=form, headers=headers) as r:
        return r.status, r.headers.get("Retry-After"), await r.text()


async def control(session, sim, **changes):
    async with session.post(f"http://127.0.0.1:{sim.port}/_control", json=changes) as r:
        assert r.status == 200, await r.text()


async def get_stats(session, sim):
    async with session.get(f"http://127.0.0.1:{sim.port}/_stats") as r:
        return await r.json()


async def wait_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()) + 0.02)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


async def test_outage_answers_503_with_retry_after_then_recovers(session):
    sim = InsightSimulator(SimulatorSettings(outage_status=503, outage_seconds=1.0, outage_retry_after_seconds=2))
    await sim.start()
    try:
        during = [await post(session, sim.base_url) for _ in range(3)]
        stats = await get_stats(session, sim)
        assert stats["contacts_queued"] == 0
        assert stats["first_accepted_after_outage"] is None
        await wait_until(stats["outage_ended_at"])
        after = [await post(session, sim.base_url) for _ in range(2)]
        stats = await get_stats(session, sim)
    finally:
        await sim.stop()
    assert during == [(503, "2", '{"success": false, "error": "service unavailable"}')] * 3
    assert [(code, retry_after) for code, retry_after, _ in after] == [(200, None), (200, None)]
    assert [r.fault for r in sim.requests] == ["outage"] * 3 + [None] * 2
    assert [r.queued for r in sim.requests] == [False] * 3 + [True] * 2
    assert stats["by_status"] == {"503": 3, "200": 2}
    assert stats["contacts_queued"] == 4
    assert stats["outage_started_at"] == sim.requests[0].started
    assert stats["outage_ended_at"] == pytest.approx(sim.requests[0].started + 1.0)
    assert stats["requests_during_outage"] == 3
    assert stats["first_accepted_after_outage"] == sim.requests[3].started
    assert stats["first_accepted_after_outage"] >= stats["outage_ended_at"]


async def test_outage_begins_after_the_given_number_of_requests(session):
    sim = InsightSimulator(SimulatorSettings(outage_status=500, outage_seconds=0.5, outage_after_requests=2,
                                             outage_retry_after_seconds=7))
    await sim.start()
    try:
        before = [await post(session, sim.base_url) for _ in range(2)]
        assert (await get_stats(session, sim))["outage_started_at"] is None
        during = await post(session, sim.base_url)
        xml = await post(session, sim.base_url, accept="application/xml")
        stats = await get_stats(session, sim)
        await wait_until(stats["outage_ended_at"])
        after = await post(session, sim.base_url)
        stats = await get_stats(session, sim)
    finally:
        await sim.stop()
    assert [code for code, _, _ in before] == [200, 200]
    # 500 is no 429/503: no Retry-After even though one is configured.
    assert during == (500, None, '{"success": false, "error": "database error"}')
    assert xml == (500, None, "<result><success>false</success><error>database error</error></result>")
    assert after[0] == 200
    assert stats["outage_started_at"] == sim.requests[2].started
    assert stats["requests_during_outage"] == 2
    assert stats["first_accepted_after_outage"] == sim.requests[4].started
    assert stats["contacts_queued"] == 6


async def test_requests_refused_before_the_outage_still_count_and_keep_their_answer(session):
    sim = InsightSimulator(SimulatorSettings(outage_status=429, outage_seconds=0.5, outage_retry_after_seconds=3))
    await sim.start()
    try:
        wrong_key = await post(session, sim.base_url, auth="Basic " + base64.b64encode(b"you@yourdomain.com:x").decode())
        limited = await post(session, sim.base_url)
        stats = await get_stats(session, sim)
    finally:
        await sim.stop()
    # The first arrival (even a refused one) starts the outage; validation still answers first.
    assert wrong_key[0] == 401 and wrong_key[1] is None
    assert limited == (429, "3", '{"success": false, "error": "too many requests"}')
    assert stats["outage_started_at"] == sim.requests[0].started
    assert stats["requests_during_outage"] == 2
    assert [r.fault for r in sim.requests] == [None, "outage"]


async def test_control_restarts_the_outage_clock(session):
    sim = InsightSimulator(SimulatorSettings(outage_status=503, outage_seconds=0.3))
    await sim.start()
    try:
        first = await post(session, sim.base_url)
        first_start = (await get_stats(session, sim))["outage_started_at"]
        await wait_until(first_start + 0.3)
        assert (await post(session, sim.base_url))[0] == 200
        # Changing an outage setting re-arms it: it begins with the 2nd request counted from now.
        await control(session, sim, outage_seconds=0.4, outage_after_requests=1)
        rearmed = await get_stats(session, sim)
        assert rearmed["outage_started_at"] is None
        assert rearmed["requests_during_outage"] == 0 and rearmed["first_accepted_after_outage"] is None
        counted = await post(session, sim.base_url)
        second = await post(session, sim.base_url)
        stats = await get_stats(session, sim)
        # Changing anything else leaves the clock alone.
        await control(session, sim, retry_after_seconds=5)
        assert (await get_stats(session, sim))["outage_started_at"] == stats["outage_started_at"]
        await wait_until(stats["outage_ended_at"])
        last = await post(session, sim.base_url)
        final = await get_stats(session, sim)
    finally:
        await sim.stop()
    assert first[0] == 503 and counted[0] == 200 and second[0] == 503 and last[0] == 200
    assert stats["outage_started_at"] == sim.requests[3].started > first_start
    assert stats["outage_ended_at"] == pytest.approx(sim.requests[3].started + 0.4)
    assert final["requests_during_outage"] == 1
    assert final["first_accepted_after_outage"] == sim.requests[4].started
    assert final["by_status"] == {"503": 2, "200": 3}


async def test_reset_and_settings_checks(session):
    sim = InsightSimulator(SimulatorSettings(outage_status=503, outage_seconds=5))
    await sim.start()
    try:
        assert (await post(session, sim.base_url))[0] == 503
        sim.reset()
        assert sim.stats()["outage_started_at"] is None
        assert (await post(session, sim.base_url))[0] == 503  # re-armed: the next request begins it again
        async with session.post(f"http://127.0.0.1:{sim.port}/_control", json={"outage_status": 200}) as r:
            assert r.status == 400 and "outage_status" in (await r.json())["error"]
        await control(session, sim, outage_status=None)
        assert (await post(session, sim.base_url))[0] == 200
        assert sim.stats()["outage_started_at"] is None
    finally:
        await sim.stop()
    with pytest.raises(ValueError, match="outage_seconds"):
        SimulatorSettings.from_mapping({"outage_status": 503, "outage_seconds": -1})
    assert SimulatorSettings().outage_status is None  # off by default
