"""What a user reads when a command refuses: the flag, key, variable or line to fix, exit 2, no traceback.

The messages do not depend on the database, so these run on SQLite only.
"""

import pytest

from tests.e2e.conftest import Cli


@pytest.fixture
def cli(tmp_path):
    cli = Cli(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
    cli("db", "upgrade")
    return cli


def _refused(cli: Cli, *args: str, **env: str) -> str:
    result = cli(*args, check=False, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def _create(cli: Cli, start: str, end: str, *, check: bool = True):
    contacts = cli.workdir / "contacts.csv"
    contacts.write_text("phone_number,first_name\n6175551234,Ann\n")
    return cli("campaign", "create", "--name", "c", "--survey-id", "1", "--instance-id", "1",
               "--contacts", str(contacts), "--start", start, "--end", end, check=check)


def test_an_end_in_the_past_is_refused_and_nothing_is_created(cli):
    result = _create(cli, "2025-06-01T00:00:00Z", "2026-01-01T00:00:00+00:00", check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "error: cannot create campaign:\n"
        "  --end: 2026-01-01T00:00:00+00:00 is in the past; a campaign must end in the future\n"
    )
    assert "no campaigns yet" in cli("campaign", "list").stdout


def test_a_start_in_the_past_with_a_future_end_is_created(cli):
    assert "campaign 1 created (scheduled)" in _create(cli, "2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z").stdout


def test_an_end_before_the_start_names_both_flags(cli):
    result = _create(cli, "2099-01-02T00:00:00Z", "2099-01-01T00:00:00Z", check=False)
    assert result.returncode == 2
    assert result.stderr == "error: cannot create campaign:\n  --end: must be after --start\n"


@pytest.mark.parametrize(
    "variable, value, problem",
    [
        ("INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE", "abc",
         "submission.chunk_size (from environment variable INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE): "
         "must be an integer (got 'abc')"),
        ("INSIGHT_SCHEDULER__SUBMISSION__CHUNKSIZE", "5",
         "submission.chunksize (from environment variable INSIGHT_SCHEDULER__SUBMISSION__CHUNKSIZE): "
         "unknown key (did you mean INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE?)"),
    ],
)
def test_a_bad_environment_override_names_the_variable(cli, variable, value, problem):
    stderr = _refused(cli, "campaign", "list", **{variable: value})
    assert stderr == f"error: invalid configuration (environment):\n  {problem}\n"


def test_suppress_remove_of_a_bad_number_says_remove(cli):
    stderr = _refused(cli, "suppress", "remove", "999")
    assert stderr.startswith("error: cannot remove: 999 is not a valid phone number (")
    assert "added" not in stderr


def test_suppress_import_of_a_missing_file(cli):
    assert _refused(cli, "suppress", "import", "nope.txt") == "error: suppress import: nope.txt does not exist\n"


def test_suppress_import_names_every_bad_line_and_adds_nothing(cli):
    lines = ["phone,name", "6175551234,a", "", "6175551235,b", "6175551236,c", "", "123,d", "6175551237,e", "45,f"]
    (cli.workdir / "dnc.csv").write_text("\n".join(lines) + "\n")
    stderr = _refused(cli, "suppress", "import", "dnc.csv")
    assert stderr == (
        "error: suppress import: nothing was added; fix these lines of dnc.csv first:\n"
        "  line 7: not a valid phone number: '123'\n"
        "  line 9: not a valid phone number: '45'\n"
    )
    assert "the suppression list is empty" in cli("suppress", "list").stdout


def test_export_refuses_to_overwrite_without_force(cli):
    _create(cli, "2099-01-01T00:00:00Z", "2099-01-02T00:00:00Z")
    report = cli.workdir / "report.csv"
    report.write_text("keep me\n")
    assert _refused(cli, "campaign", "export", "1", "--out", "report.csv") == (
        "error: --out: report.csv exists; add --force to overwrite\n"
    )
    assert report.read_text() == "keep me\n"
    assert "written to report.csv" in cli("campaign", "export", "1", "--out", "report.csv", "--force").stdout
    assert report.read_text().startswith("row_number,")
    assert sorted(p.name for p in cli.workdir.glob("*report.csv*")) == ["report.csv"]


@pytest.mark.parametrize("column, value", [("start_at", "'tomorrow'"), ("end_at", "'2026-02-30 10:00'"),
                                           ("end_at", "''"), ("max_attempts", "'three'"), ("status", "'Scheduled'")])
def test_list_and_show_print_any_row_an_admin_wrote_without_a_traceback(cli, column, value):
    """Issue 11 item 4: one unreadable value once made `campaign list` exit 1 with a traceback."""
    import sqlite3

    conn = sqlite3.connect(cli.workdir / "test.db", isolation_level=None)
    conn.execute("INSERT INTO campaigns (name, survey_id, instance_id, contacts_path, start_at, end_at) "
                 "VALUES ('typo', '1', '1', '/c.csv', '2030-01-01 00:00:00', '2030-01-02 00:00:00')")
    conn.execute(f"UPDATE campaigns SET {column} = {value}")
    conn.close()
    listed = cli("campaign", "list")
    shown = cli("campaign", "show", "1")
    as_json = cli("campaign", "show", "1", "--json")
    for result in (listed, shown, as_json):
        assert "Traceback" not in result.stderr
    raw = value.strip("'")
    if column in ("start_at", "end_at"):
        assert f"{raw!r} (not a time" in listed.stdout and f"{raw!r} (not a time" in shown.stdout
    assert raw in as_json.stdout
