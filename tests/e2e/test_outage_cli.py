"""What an admin sees of a Plum outage from the CLI: `campaign list` and `campaign show`
while the account's circuit breaker is open (the row the daemon writes), and the
simulator's outage flags."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

from scheduler.breaker import Snapshot
from tests.conftest import REPO_ROOT, repository_at
from tests.support.harness import execute

ACCOUNT = "https://insight.plumvoice.com/api you@yourdomain.com"  # the default config's account


async def test_list_and_show_say_the_campaign_is_waiting_for_plum(cli, db_url):
    cli("db", "upgrade")
    contacts = cli.workdir / "c.csv"
    contacts.write_text("phone_number\n6175551234\n")
    cli("campaign", "create", "--name", "w", "--survey-id", "1", "--instance-id", "1", "--contacts", str(contacts),
        "--start", "2030-12-01T14:00:00Z", "--end", "2030-12-02T14:00:00Z")
    async with repository_at(db_url) as repo:
        await execute(repo, "UPDATE campaigns SET status = 'running', status_seen = 'running'")
        # the row the daemon writes when its breaker opens (repository.save_account)
        since = datetime(2026, 12, 3, 14, 2, 11, tzinfo=timezone.utc)
        await repo.save_account(ACCOUNT, Snapshot(True, since, 4, "HTTP 503 from Plum: service unavailable", None),
                                "d1", since)
    listed = cli("campaign", "list").stdout
    assert "waiting for Plum since" in " ".join(listed.split())
    assert "(4 probes)" in " ".join(listed.split())
    shown = " ".join(cli("campaign", "show", "1").stdout.split())  # rich wraps at the terminal's width
    assert "waiting for Plum since 2026-12-03 14:02:11 UTC (4 probes); last error: HTTP 503" in shown, shown[:3000]
    data = json.loads(cli("campaign", "show", "1", "--json").stdout)
    assert data["plum"].startswith("waiting for Plum since 2026-12-03 14:02:11 UTC (4 probes)")
    assert data["unknown_outcomes"] == {"reconciled_from_call_results": 0, "still_unconfirmed": 0}
    async with repository_at(db_url) as repo:
        await execute(repo, "UPDATE plum_accounts SET breaker = 'closed', open_since = NULL")
    assert "waiting for Plum" not in cli("campaign", "list").stdout
    assert json.loads(cli("campaign", "show", "1", "--json").stdout)["plum"] == "accepting requests"


def test_simulate_refuses_a_bad_outage_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scheduler", "simulate", "--port", "0", "--outage-status", "700",
                             "--outage-seconds", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert "outage_status" in result.stderr and "Traceback" not in result.stderr
