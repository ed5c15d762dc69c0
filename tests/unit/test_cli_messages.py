"""What the CLI tells a user, checked without a database: flags named as typed, lines as numbered."""

import argparse
from datetime import datetime, timezone

import pytest

from scheduler.cli import _numbers_in_csv, _numbers_in_list, flag_problem, when_problems
from scheduler.config import Settings
from scheduler.errors import UserError
from scheduler.rules import WaitBounds, campaign_problems

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
START = datetime(2026, 12, 1, tzinfo=timezone.utc)
END = datetime(2026, 12, 2, tzinfo=timezone.utc)
VALID = dict(survey_id="1", instance_id="1", start_at=START, end_at=END, max_attempts=1, reattempt_wait=None)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"survey_id": ""}, "--survey-id: must not be empty"),
        ({"instance_id": " "}, "--instance-id: must not be empty"),
        ({"end_at": START}, "--end: must be after --start"),
        ({"max_attempts": 11}, "--max-attempts: must be an integer between 1 and 10 (got 11)"),
        ({"max_attempts": 2}, "--reattempt-wait: required when --max-attempts > 1"),
        (
            {"max_attempts": 2, "reattempt_wait": 5},
            "--reattempt-wait: must be an integer between 60 and 86400 seconds when --max-attempts > 1 (got 5)",
        ),
        (
            {"chunk_size": 0},
            "--chunk-size: must be an integer >= 1 (or leave it out for the configured submission.chunk_size)",
        ),
    ],
)
def test_campaign_problems_name_the_flags_the_user_typed(changes, message):
    problems = campaign_problems(**{**VALID, **changes}, bounds=WaitBounds())
    assert [flag_problem(p) for p in problems] == [message]


def _when(start: str, end: str):
    return when_problems(argparse.Namespace(start=start, end=end), NOW)


@pytest.mark.parametrize(
    "end, message",
    [
        ("2026-01-01T00:00:00+00:00",
         "--end: 2026-01-01T00:00:00+00:00 is in the past; a campaign must end in the future"),
        ("1700000000",
         "--end: 1700000000 (2023-11-14T22:13:20+00:00) is in the past; a campaign must end in the future"),
        ("2026-11-30T07:00:00-05:00",
         "--end: 2026-11-30T07:00:00-05:00 (2026-11-30T12:00:00+00:00) is in the past; "
         "a campaign must end in the future"),
    ],
)
def test_an_end_that_is_not_in_the_future_is_refused(end, message):
    _, _, problems = _when("2025-01-01T00:00:00Z", end)
    assert problems == [message]


def test_a_start_in_the_past_with_a_future_end_starts_at_once():
    start, end, problems = _when("2025-01-01T00:00:00Z", "2026-11-30T12:00:01Z")
    assert problems == []
    assert start == datetime(2025, 1, 1, tzinfo=timezone.utc) and end > NOW


def test_an_unreadable_end_is_named_once():
    _, end, problems = _when("2027-01-01T00:00:00Z", "tomorrow")
    assert end is None
    assert problems == ["--end: 'tomorrow' is neither ISO 8601 (e.g. 2026-12-01T14:00:00+00:00) nor a Unix timestamp"]


def _import_error(path) -> str:
    settings = Settings()
    with pytest.raises(UserError) as info:
        numbers = _numbers_in_csv(path, settings)
        if numbers is None:
            _numbers_in_list(path, settings)
    return str(info.value)


@pytest.mark.parametrize(
    "content, lines",
    [
        # blank lines count as lines of the file, not as rows
        ("phone,name\n6175551234,a\n\n\n123,b\n6175551235,c\n999,d\n", ["line 5: not a valid phone number: '123'",
                                                                         "line 7: not a valid phone number: '999'"]),
        ("\ufeffphone,name\r\n6175551234,a\r\n   \r\n12,b\r\n", ["line 4: not a valid phone number: '12'"]),
        ("phone;name\n6175551234;a\n\n123;b\n", ["line 4: not a valid phone number: '123'"]),
        ("name,phone\na,6175551234\nb,6175551235,extra\n", ["line 3: row has 3 fields, the header has 2"]),
    ],
)
def test_every_bad_number_of_a_csv_import_is_named_by_its_line(tmp_path, content, lines):
    path = tmp_path / "dnc.csv"
    path.write_text(content, encoding="utf-8", newline="")
    assert _import_error(path) == (
        f"suppress import: nothing was added; fix these lines of {path} first:\n"
        + "\n".join(f"  {line}" for line in lines)
    )


def test_every_bad_number_of_a_plain_list_is_named_by_its_line(tmp_path):
    path = tmp_path / "dnc.txt"
    path.write_text("6175551234\n\n123\n6175551235\n  999  \n")
    assert _import_error(path) == (
        f"suppress import: nothing was added; fix these lines of {path} first:\n"
        "  line 3: not a valid phone number: '123'\n"
        "  line 5: not a valid phone number: '999'\n"
        f"({path} was read as a list of numbers, one per line, because its first line names no phone column: "
        "phone_number, destination, phone, number)"
    )


def test_a_good_import_returns_every_number(tmp_path):
    path = tmp_path / "dnc.csv"
    path.write_text("name,phone\na,617-253-1000\n\nb,,\nc,(303) 555-0199\n")
    assert _numbers_in_csv(path, Settings()) == ["+16172531000", "+13035550199"]
    listed = tmp_path / "dnc.txt"
    listed.write_text("617-253-1000\n\n+1 303 555 0199\n")
    assert _numbers_in_csv(listed, Settings()) is None
    assert _numbers_in_list(listed, Settings()) == ["+16172531000", "+13035550199"]


def test_an_unusable_import_file_is_named_without_calling_it_a_contacts_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    message = _import_error(path)
    assert message.startswith(f"suppress import: {path} ")
    assert "contacts file" not in message
