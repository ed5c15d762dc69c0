"""Call results through result_url, reports, export, health and metrics — on both databases."""

from __future__ import annotations

import asyncio
import csv
import logging
import socket

import aiohttp
from pydantic import SecretStr

from scheduler.callbacks import callback_path, sign
from scheduler.export import write_export
from tests.support.harness import campaign, e164, rows, running_daemon, settings_for, simulator, valid_numbers, \
    write_contacts

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}
SECRET = "cb-secret-value"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_callbacks(settings, port: int):
    return settings.model_copy(update={"callbacks": settings.callbacks.model_copy(update={
        "listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}", "secret": SecretStr(SECRET)})})


async def wait_until(predicate, timeout=20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_call_results_flow_into_show_export_and_metrics(repo, db_url, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    numbers = valid_numbers(30)
    contacts = write_contacts(tmp_path / "c.csv", numbers)
    port = free_port()
    async with simulator(callback_delay_seconds=0.05, fail_first=2) as sim:
        settings = with_callbacks(settings_for(db_url, sim.base_url), port)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings) as daemon:
            async def all_results():
                return sim.callbacks_sent >= 30 and len(await rows(repo, "SELECT id FROM call_results")) >= 30
            await wait_until(all_results)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    metrics = await response.text()
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    ready = (response.status, await response.json())
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
            assert daemon.web is not None
    # every queued contact got its result, matched by number
    matched = await rows(repo, "SELECT c.phone, r.status FROM call_results r JOIN contacts c ON c.id = r.contact_id")
    assert sorted(p for p, _ in matched) == sorted(e164(n) for n in numbers)
    assert {s for _, s in matched} <= {"completed", "failed", "canceled"}
    # every request carried a signed result_url
    urls = {r.fields["result_url"] for r in sim.requests}
    assert all(u.startswith(f"http://127.0.0.1:{port}/callbacks/{row.id}/") and "?sig=" in u for u in urls)
    report = await repo.campaign_report(row.id)
    assert sum(v for k, v in report.call_results_by_status.items() if k != "awaiting") == 30
    assert report.call_results_by_status["awaiting"] == 0
    # metrics show what the simulator saw
    assert 'insight_submissions_total{outcome="retryable",status_code="500"} 2.0' in metrics
    assert f'insight_submissions_total{{outcome="accepted",status_code="200"}} {sim.stats()["by_status"]["200"]}.0' \
        in metrics
    assert ready == (200, {"ready": True, "plum": "accepting", "plum_state": "Plum accepting requests",
                           "answers_waiting_for_database": 0})
    # the export carries the call results
    out = tmp_path / "export.csv"
    assert await write_export(repo, row.id, out) == 30
    exported = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {r["call_status"] for r in exported} <= {"completed", "failed", "canceled"}
    assert all(r["contact_status"] == "queued" and r["last_submission_status_code"] == "200" for r in exported)
    # the secret never reached a log line
    assert SECRET not in caplog.text and "right-key" not in caplog.text


async def test_signatures_replays_sizes_and_malformed_bodies(repo, db_url, tmp_path):
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(3))
    port = free_port()
    async with simulator() as sim:
        settings = with_callbacks(settings_for(db_url, sim.base_url), port)
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings):
            await wait_until(lambda: _final(repo, row.id))
            chunk_id = (await rows(repo, "SELECT id FROM chunks"))[0][0]
            path = callback_path(row.id, chunk_id)
            base = f"http://127.0.0.1:{port}{path}"
            good = f"{base}?sig={sign(SECRET, path)}"
            body = {"status": "completed", "attempts": 1, "duration": 42, "phone_number": "+1 " + e164(
                valid_numbers(3)[0])[2:]}
            async with aiohttp.ClientSession() as http:
                async def post(url, **kwargs):
                    async with http.post(url, **kwargs) as response:
                        return response.status
                assert (await http.get(good)).status == 200  # Plum's probe
                assert await post(base, json=body) == 403  # unsigned
                assert await post(f"{base}?sig={'0' * 64}", json=body) == 403  # wrong signature
                other = callback_path(row.id, chunk_id + 1000)
                assert await post(f"http://127.0.0.1:{port}{other}?sig={sign(SECRET, path)}", json=body) == 403
                assert await post(good, json=body) == 200
                assert await post(good, json=body) == 200  # replayed: stored once
                assert await post(good, data={"status": "failed", "attempts": "2"}) == 200  # form-encoded
                assert await post(good, data=b"{not json", headers={"Content-Type": "application/json"}) == 400
                assert await post(good, json={"attempts": 1}) == 400  # no status
                assert await post(good, data=b"x" * 70_000, headers={"Content-Type": "application/json"}) == 413
                missing = callback_path(row.id, 999_999)
                assert await post(f"http://127.0.0.1:{port}{missing}?sig={sign(SECRET, missing)}", json=body) == 404
    stored = await rows(repo, "SELECT status, duration_seconds, contact_id FROM call_results ORDER BY id")
    assert [(s, d) for s, d, _ in stored] == [("completed", 42), ("failed", None)]
    assert stored[0][2] is not None  # matched to the contact by its number


async def _final(repo, campaign_id):
    return (await repo.get_campaign(campaign_id)).status in FINAL


async def test_export_lists_every_contact_status_and_neutralises_formulas(repo, db_url, tmp_path):
    numbers = valid_numbers(9)
    contacts = tmp_path / "c.csv"
    lines = ["phone_number,name,note"] + [f'{n},=cmd|" /C calc"!A0,row {i}' for i, n in enumerate(numbers)]
    lines += ["12345,bad,x", f"{numbers[0]},again,x", "@SUM(1+1),formula,x"]
    contacts.write_text("\n".join(lines) + "\n")
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(contacts, chunk_size=1))
        async with running_daemon(settings_for(db_url, sim.base_url, chunk_size=1)):
            await wait_until(lambda: _final(repo, row.id))
    # give the remaining statuses to some contacts, as other outcomes would have
    statuses = ["rejected", "failed", "unknown", "expired", "cancelled", "pending"]
    for row_number, status in zip(range(2, 8), statuses):
        await _execute(repo, "UPDATE contacts SET status = :s WHERE campaign_id = :c AND row_number = :r",
                       s=status, c=row.id, r=row_number)
    out = tmp_path / "export.csv"
    assert await write_export(repo, row.id, out) == 12
    exported = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["row_number"] for r in exported] == [str(n) for n in range(1, 13)]
    assert {r["contact_status"] for r in exported} == {"queued", "invalid", "duplicate", *statuses}
    assert all(r["name"].startswith("'=cmd") for r in exported[:9])
    assert exported[11]["original_number"] == "'@SUM(1+1)" and exported[11]["contact_status"] == "invalid"
    assert exported[0]["normalised_number"] == e164(numbers[0])  # ours, not neutralised
    assert exported[10]["reason"] == "same number as row 1"


async def _execute(repo, sql, **params):
    from sqlalchemy import text

    async with repo.engine.begin() as conn:
        await conn.execute(text(sql), params)
