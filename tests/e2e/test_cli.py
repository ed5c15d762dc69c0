"""The CLI as a subprocess, on SQLite and PostgreSQL."""

import json
import re

import pytest

from tests.e2e.conftest import Cli


def _contacts(cli: Cli) -> str:
    path = cli.workdir / "contacts.csv"
    path.write_text("phone_number,first_name\n6175551234,Ann\n")
    return str(path)


def test_create_then_show_round_trips(cli):
    assert "head" in cli("db", "upgrade").stdout
    out = cli(
        "campaign", "create", "--name", "Winter", "--survey-id", "77", "--instance-id", "3",
        "--contacts", _contacts(cli), "--start", "2030-12-01T09:00:00-05:00", "--end", "1922374800",
        "--max-attempts", "2", "--reattempt-wait", "120", "--result-url", "https://example.invalid/r",
    ).stdout
    assert "campaign 1 created (scheduled)" in out
    shown = json.loads(cli("campaign", "show", "1", "--json").stdout)["campaign"]
    assert shown["name"] == "Winter"
    assert shown["survey_id"] == "77" and shown["instance_id"] == "3"
    assert shown["start_at"].startswith("2030-12-01 14:00:00")
    assert shown["end_at"].startswith("2030-12-01 17:00:00")
    assert (shown["max_attempts"], shown["reattempt_wait"]) == (2, 120)
    assert shown["result_url"] == "https://example.invalid/r"
    assert shown["contacts_path"] == str(cli.workdir / "contacts.csv")
    assert shown["status"] == "scheduled"
    assert "Winter" in cli("campaign", "list").stdout


def test_draft_pause_resume_cancel(cli):
    cli("db", "upgrade")
    cli("campaign", "create", "--name", "d", "--survey-id", "1", "--instance-id", "1", "--contacts",
        _contacts(cli), "--start", "2030-12-01T14:00:00Z", "--end", "2030-12-02T14:00:00Z", "--draft")
    assert json.loads(cli("campaign", "show", "1", "--json").stdout)["campaign"]["status"] == "draft"
    assert "now scheduled" in cli("campaign", "resume", "1").stdout
    assert "now paused" in cli("campaign", "pause", "1").stdout
    assert "now cancelled" in cli("campaign", "cancel", "1").stdout
    refused = cli("campaign", "resume", "1", check=False)
    assert refused.returncode == 2 and "is cancelled" in refused.stderr


BROKEN_CONFIG = """\
database:
  url: sqlite+aiosqlite:///x.db
insight:
  developer_key: do-not-print-me
  timeout_seconds: soon
submission:
  chunk_size: 0
  max_concurrency: -2
  rate_limit_per_second: 0
  retry:
    max_tries: 0
    surprise: true
scheduler:
  poll_interval_seconds: -1
"""


def test_broken_config_lists_every_problem_and_exits_2(cli):
    cli.config.write_text(BROKEN_CONFIG)
    result = cli("campaign", "list", check=False)
    assert result.returncode == 2
    for problem in (
        "insight.timeout_seconds: must be a number",
        "submission.chunk_size: must be >= 1",
        "submission.max_concurrency: must be >= 1",
        "submission.rate_limit_per_second: must be > 0",
        "submission.retry.max_tries: must be >= 1",
        "submission.retry.surprise: unknown key",
        "scheduler.poll_interval_seconds: must be > 0",
    ):
        assert problem in result.stderr
    assert "Traceback" not in result.stderr
    assert "do-not-print-me" not in result.stderr + result.stdout


def test_create_with_a_calling_window(cli):
    cli("db", "upgrade")
    cli("campaign", "create", "--name", "w", "--survey-id", "1", "--instance-id", "1", "--contacts",
        _contacts(cli), "--start", "2030-12-01T14:00:00Z", "--end", "2030-12-02T14:00:00Z",
        "--calling-window", "9:00-17:30", "--excluded-weekdays", "sat,sun")
    shown = json.loads(cli("campaign", "show", "1", "--json").stdout)["campaign"]
    assert (shown["calling_window_start"], shown["calling_window_end"]) == ("09:00", "17:30")
    assert shown["excluded_weekdays"] == "sat,sun"


@pytest.mark.parametrize(
    "contacts, message",
    [
        ("calling_window: 21:00-08:00", "contacts.calling_window: the window must end after it starts within one day"),
        ("timezone_policy: campaign", "contacts: campaign_timezone is required when timezone_policy is campaign"),
        ("campaign_timezone: Mars/Base", "contacts.campaign_timezone: 'Mars/Base' is not an IANA time zone"),
        ("timezone_policy: sender", "contacts.timezone_policy: must be one of 'recipient' or 'campaign'"),
    ],
)
def test_bad_calling_window_settings_are_named(cli, contacts, message):
    cli.config.write_text(f"contacts:\n  {contacts}\n")
    result = cli("campaign", "list", check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["campaign", "show", "9"], "no campaign with id 9"),
        (["campaign", "create", "--name", "x", "--survey-id", "1", "--instance-id", "1", "--contacts",
          "/nope.csv", "--start", "2030-12-01T14:00:00Z", "--end", "2030-12-01T15:00:00Z",
          "--calling-window", "8-21", "--excluded-weekdays", "weekend"],
         "--calling-window: '8' is not a time of day like 08:00"),
        (["campaign", "create", "--name", "x", "--survey-id", "1", "--instance-id", "1", "--contacts",
          "/nope.csv", "--start", "2030-12-01T14:00:00Z", "--end", "2030-12-01T15:00:00Z",
          "--excluded-weekdays", "weekend"], "--excluded-weekdays: 'weekend' is not a weekday"),
        (["demo", "--timezone-policy", "campaign"], "--campaign-timezone: required with --timezone-policy campaign"),
        (["demo", "--calling-window", "09:00-09:00"], "--calling-window: the window must end after it starts"),
        (["campaign", "create", "--name", "x", "--survey-id", "1", "--instance-id", "1", "--contacts",
          "/nope.csv", "--start", "2030-12-01T14:00:00", "--end", "2030-12-01T15:00:00Z",
          "--max-attempts", "11"], "--max-attempts: must be an integer between 1 and 10"),
        (["campaign", "pause", "abc"], "invalid int value"),
        (["campaign", "frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_exit_2_without_traceback(cli, args, message):
    cli("db", "upgrade")
    result = cli(*args, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request, tmp_path):
    """A database with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
        return
    import asyncio
    import uuid

    from tests.conftest import PG_ADMIN_URL, _admin

    name = f"insight_empty_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_unmigrated_database_asks_for_db_upgrade(tmp_path, empty_db_url):
    cli = Cli(tmp_path, empty_db_url)
    result = cli("campaign", "list", check=False)
    assert result.returncode == 2
    assert "has no schema: run `insight-scheduler db upgrade`" in result.stderr
    cli("db", "upgrade")
    assert cli("campaign", "list").returncode == 0


def test_unreachable_database_is_named_with_password_masked(cli):
    result = cli(
        "campaign", "list", check=False,
        INSIGHT_SCHEDULER__DATABASE__URL="postgresql+asyncpg://admin:s3cr3t@127.0.0.1:9/nowhere",
    )
    assert result.returncode == 2
    assert "cannot connect to database postgresql+asyncpg://admin:***@127.0.0.1:9/nowhere" in result.stderr
    assert "s3cr3t" not in result.stderr
    assert "Traceback" not in result.stderr


def test_suppress_add_import_list_remove(cli):
    cli("db", "upgrade")
    assert "2 number(s) added" in cli("suppress", "add", "(617) 253-1000", "+1 212 736 5000", "--reason", "asked").stdout
    refused = cli("suppress", "add", "12345", check=False)
    assert refused.returncode == 2 and "not a valid phone number: '12345'" in refused.stderr
    (cli.workdir / "dnc.csv").write_text("name,phone\nA,617-253-1000\nB,303 555 0199\n")
    assert "1 number(s) added" in cli("suppress", "import", str(cli.workdir / "dnc.csv")).stdout
    listed = cli("suppress", "list").stdout
    assert "+16172531000" in listed and "+13035550199" in listed and "import:dnc.csv" in listed
    assert "removed" in cli("suppress", "remove", "6172531000").stdout
    again = cli("suppress", "remove", "6172531000", check=False)
    assert again.returncode == 2
    assert "cannot remove: +16172531000 is not on the suppression list" in again.stderr


@pytest.fixture
def demo_cli(tmp_path):
    """The demo makes its own SQLite database: one run, not one per database."""
    return Cli(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")


def test_demo_with_recipient_time_zones_lists_chunks_per_zone(demo_cli):
    result = demo_cli("demo", "--contacts", "400", "--chunk-size", "50", "--timezone-policy", "recipient",
                      "--keep", timeout=120, COLUMNS="220")
    out = result.stdout
    assert "chunks by time zone (calling windows)" in out
    for zone in ("America/New_York", "America/Chicago", "America/Los_Angeles", "Pacific/Honolulu"):
        assert zone in out
    assert re.search(r"numbers queued more than once\W+0\b", out)
    assert "Traceback" not in result.stderr
    # the kept database shows the same table through `campaign show`
    url = out.split("INSIGHT_SCHEDULER__DATABASE__URL=", 1)[1].split()[0]
    shown = demo_cli("campaign", "show", "1", "--json", INSIGHT_SCHEDULER__DATABASE__URL=url)
    zones = {tuple(z["zones"]) for z in json.loads(shown.stdout)["chunks_by_zone"]}
    assert ("America/New_York",) in zones and ("America/Chicago",) in zones
    assert all(z["local_windows"] for z in json.loads(shown.stdout)["chunks_by_zone"])
