"""What the console's live pages read: aggregates and indexes, never a campaign's contact or call
result rows (a million of them would be read every few seconds). On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from sqlalchemy import event

from scheduler.callbacks import CallDetails
from tests.support.console import add_user, console_client, sign_in
from tests.support.harness import execute, rows

NOW = datetime.now(timezone.utc)


async def campaign_with_results(repo) -> None:
    await execute(repo, "INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at, status, "
                        "contacts_valid, contacts_queued) VALUES ('c', '1', '2', '/x', :s, :e, 'running', 5, 3)",
                  s=NOW, e=NOW + timedelta(hours=1))
    await execute(repo, "INSERT INTO chunks (campaign_id, seq, status, contact_count, attempts, created_at, updated_at) "
                        "VALUES (1, 0, 'succeeded', 3, 1, :t, :t)", t=NOW)
    for i, status in enumerate(("completed", "completed", "no_answer")):
        details = CallDetails(phone=None, status=status, attempts=1, duration_seconds=30 + i, queued_timestamp=None,
                              last_attempt_timestamp=None)
        assert await repo.store_call_result(1, 1, details, f'{{"n": {i}}}', None, NOW) == "stored"
    # an admin's SQL, without a status
    await execute(repo, "INSERT INTO call_results (campaign_id, chunk_id, status, received_at, body, body_sha256) "
                        "VALUES (1, 1, NULL, :t, '{}', 'by hand')", t=NOW)


async def test_call_result_counters_follow_the_rows(repo):
    await campaign_with_results(repo)
    counted = (await repo.campaign_report(1, live=True)).call_results_by_status
    assert counted == (await repo.campaign_report(1)).call_results_by_status
    assert counted == {"completed": 2, "no_answer": 1, None: 1, "awaiting": 0}
    await execute(repo, "DELETE FROM call_results WHERE status = 'completed'")
    assert (await repo.campaign_report(1, live=True)).call_results_by_status == {"no_answer": 1, None: 1,
                                                                                  "awaiting": 1}


async def test_live_pages_read_no_contact_or_call_result_row(repo):
    await campaign_with_results(repo)
    await execute(repo, "INSERT INTO contacts (campaign_id, row_number, raw_phone, phone, status, chunk_id) "
                        "VALUES (1, 1, '6175550100', '+16175550100', 'queued', 1)")
    await add_user(repo, "alice", "admin")
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    async with console_client(repo) as client:
        await sign_in(client, "alice")
        event.listen(repo.engine.sync_engine, "before_cursor_execute", seen)
        try:
            for path in ("/console/", "/console/campaigns/table", "/console/campaigns/1", "/console/campaigns/1/live"):
                assert (await client.get(path)).status == 200
        finally:
            event.remove(repo.engine.sync_engine, "before_cursor_execute", seen)
        reading = [s for s in statements if re.search(r"\bFROM (contacts|call_results)\b(?! ORDER BY)", s)]
        # the campaign page's 10 latest call results use the primary key, newest first, and stop there
        assert all("ORDER BY call_results.id DESC" in s and "LIMIT" in s for s in reading), reading
        assert not [s for s in statements if re.search(r"\bFROM contacts\b", s)]
        page = await (await client.get("/console/campaigns/1")).text()
        assert re.search(r"<th>completed</th><td>2</td>", page) and re.search(r"<th>no_answer</th><td>1</td>", page)
        # the exact count per contact status reads the contacts: only when asked for
        counts = await (await client.get("/console/campaigns/1/contacts")).text()
        assert re.search(r"<th>queued</th><td>1</td>", counts)


async def test_requests_by_second_are_counted_in_the_database(repo):
    await campaign_with_results(repo)
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=5)
    for offset in (0.1, 0.5, 0.9, 2.2):
        await execute(repo, "INSERT INTO submissions (campaign_id, chunk_id, attempt, started_at, outcome, contact_count) "
                            "VALUES (1, 1, 1, :t, 'accepted', 3)", t=base + timedelta(seconds=offset))
    counted = await repo.requests_by_second(1)
    assert counted == [(base, 3), (base + timedelta(seconds=2), 1)]
    overview = await repo.console_overview(datetime.now(timezone.utc))
    assert overview.requests_last_minute == {1: 4} and overview.account_last_minute == 4
    assert [row[0] for row in await rows(repo, "SELECT count(*) FROM call_result_counts")] == [3]
