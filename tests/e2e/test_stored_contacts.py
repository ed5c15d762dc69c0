"""`campaign create --contacts FILE` stores the file in the database: a daemon that cannot
see the admin's file (another host) still ingests it; a row inserted by SQL reads contacts_path."""

from __future__ import annotations

import json
from collections import Counter

from tests.conftest import repository_at
from tests.support.harness import e164, execute, running_daemon, settings_for, simulator, valid_numbers, wait_for
from tests.support.harness import write_contacts

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


def _create(cli, path) -> str:
    return cli("campaign", "create", "--name", "stored", "--survey-id", "77", "--instance-id", "3",
               "--contacts", str(path), "--start", "2020-01-01T00:00:00Z", "--end", "2099-01-01T00:00:00Z").stdout


async def test_a_daemon_without_the_admins_file_ingests_the_stored_copy(cli, db_url):
    cli("db", "upgrade")
    numbers = valid_numbers(120, seed=9)
    path = write_contacts(cli.workdir / "laptop.csv", numbers)
    out = _create(cli, path)
    assert "contacts file stored in the database" in out
    path.unlink()  # the daemon runs elsewhere: the admin's file is not there
    shown = json.loads(cli("campaign", "show", "1", "--json").stdout)
    assert shown["contacts_file"]["stored_in_database"] is True
    assert shown["contacts_file"]["file_name"] == "laptop.csv"
    async with repository_at(db_url) as repo, simulator() as sim:
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, 1, FINAL)
    assert done.status == "completed", done.last_error
    assert sim.queued_numbers == Counter({e164(n): 1 for n in numbers})


async def test_a_stored_file_changed_in_the_database_fails_the_campaign_naming_it(cli, db_url):
    cli("db", "upgrade")
    _create(cli, write_contacts(cli.workdir / "c.csv", valid_numbers(10)))
    async with repository_at(db_url) as repo:
        await execute(repo, "UPDATE campaign_files SET sha256 = 'x'")
        async with simulator() as sim:
            async with running_daemon(settings_for(db_url, sim.base_url)):
                done = await wait_for(repo, 1, FINAL)
    assert done.status == "failed"
    assert "c.csv (stored in the database)" in done.last_error and "SHA-256" in done.last_error
    assert len(sim.requests) == 0


async def test_a_bad_line_in_a_stored_file_is_named_with_the_file_not_a_temporary_path(cli, db_url):
    cli("db", "upgrade")
    bad = cli.workdir / "quote.csv"
    bad.write_text('phone_number,name\n6175551234,"Ann\n6175551235,Bo\n')
    _create(cli, bad)
    async with repository_at(db_url) as repo, simulator() as sim:
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, 1, FINAL)
    assert done.status == "failed"
    assert "quote.csv (stored in the database)" in done.last_error, done.last_error
    assert "insight-contacts-" not in done.last_error
