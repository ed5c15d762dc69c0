"""The simulator's own behaviour that later tests rely on as ground truth."""

import asyncio
import base64

import aiohttp
from aiohttp import web

from scheduler.simulator import InsightSimulator, SimulatorSettings

CSV = b"phone_number,name\n+16175551234,A\n+16175551235,B\n"


async def post(base_url, csv=CSV, auth=("you@yourdomain.com", ""), **fields):
    form = aiohttp.FormData()
    form.add_field("csv", csv, filename="c.csv", content_type="text/csv")
    for name, value in fields.items():
        form.add_field(name, str(value))
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    async with aiohttp.ClientSession() as session:
        url = f"{base_url}/surveys/1/2/bulk_queue"
        async with session.post(url, data=form, headers={"Authorization": f"Basic {token}"}) as r:
            return r.status, await r.text()


async def test_stats_count_codes_contacts_duplicates_and_concurrency():
    sim = InsightSimulator(SimulatorSettings(latency_mean_seconds=0.2, fail_first=1))
    await sim.start()
    try:
        results = await asyncio.gather(*(post(sim.base_url) for _ in range(4)))
        stats = sim.stats()
    finally:
        await sim.stop()
    assert sorted(code for code, _ in results) == [200, 200, 200, 500]
    assert stats["by_status"] == {"200": 3, "500": 1}
    assert stats["contacts_queued"] == 6
    assert stats["numbers_queued_more_than_once"] == 2
    assert stats["largest_chunk"] == 2
    assert stats["max_in_flight"] == 4
    assert stats["max_started_in_one_second"] == 4


async def test_documented_attempts_message_and_missing_csv():
    sim = InsightSimulator()
    await sim.start()
    try:
        assert await post(sim.base_url, max_attempts=11) == (
            400, '{"success": false, "error": "attempts can only be an integer between 1 and 10."}')
        code, body = await post(sim.base_url, csv=b"name\nx\n")
        assert code == 400 and "CSV was invalid" in body
        sim.settings.answer_style = "doc"
        assert await post(sim.base_url) == (200, "{'success':true}")
    finally:
        await sim.stop()


async def test_call_results_are_posted_to_result_url():
    received = []

    async def collect(request):
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/cb", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    sim = InsightSimulator(SimulatorSettings(callback_delay_seconds=0.05, seed=3))
    await sim.start()
    try:
        await post(sim.base_url, result_url=f"http://127.0.0.1:{port}/cb", max_attempts=1)
        for _ in range(50):
            if len(received) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await sim.stop()
        await runner.cleanup()
    assert sorted(r["phone_number"] for r in received) == ["+16175551234", "+16175551235"]
    assert {r["status"] for r in received} <= {"completed", "failed", "canceled"}
    assert all({"attempts", "max_attempts", "events", "queued_timestamp"} <= set(r) for r in received)
