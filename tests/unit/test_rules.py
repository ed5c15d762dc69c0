from datetime import datetime, timezone

import pytest

from scheduler.rules import WaitBounds, attempt_problems, campaign_problems, parse_when

UTC = timezone.utc
T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 1, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-12-01T14:00:00Z", T0),
        ("2026-12-01T14:00:00+00:00", T0),
        ("2026-12-01T09:00:00-05:00", T0),
        ("2026-12-01 15:00:00+01:00", T0),
        (str(int(T0.timestamp())), T0),
        (f"{T0.timestamp():.1f}", T0),
    ],
)
def test_parse_when_accepts_offsets_and_unix_seconds(text, expected):
    assert parse_when(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("2026-12-01T14:00:00", "no UTC offset"),
        ("tomorrow", "neither ISO 8601"),
        ("", "neither ISO 8601"),
        ("1e30", "out of range"),
    ],
)
def test_parse_when_refuses_ambiguous_or_garbage(text, message):
    with pytest.raises(ValueError, match=message):
        parse_when(text)


@pytest.mark.parametrize(
    "max_attempts, reattempt_wait, problem",
    [
        (1, None, None),
        (1, 5, None),  # ignored when there is no reattempt
        (10, 60, None),
        (3, 86400, None),
        (0, None, "max_attempts: must be an integer between 1 and 10 (got 0)"),
        (11, 60, "max_attempts: must be an integer between 1 and 10 (got 11)"),
        ("3", 60, "max_attempts: must be an integer between 1 and 10 (got '3')"),
        (True, None, "max_attempts: must be an integer between 1 and 10 (got True)"),
        (2, None, "reattempt_wait: required when max_attempts > 1"),
        (2, 59, "reattempt_wait: must be an integer between 60 and 86400 seconds when max_attempts > 1 (got 59)"),
        (2, 86401, "reattempt_wait: must be an integer between 60 and 86400 seconds when max_attempts > 1 (got 86401)"),
    ],
)
def test_attempt_rules(max_attempts, reattempt_wait, problem):
    assert attempt_problems(max_attempts, reattempt_wait) == ([problem] if problem else [])


def test_wait_bounds_are_configurable():
    assert attempt_problems(2, 30, WaitBounds(10, 100)) == []


@pytest.mark.parametrize(
    "fields, problems",
    [
        ({}, []),
        ({"survey_id": " "}, ["survey_id: must not be empty"]),
        ({"instance_id": None}, ["instance_id: must not be empty"]),
        ({"end_at": T0}, ["end_at: must be after start_at"]),
        ({"start_at": None}, ["start_at: must be set"]),
        ({"chunk_size": 0}, ["chunk_size: must be an integer >= 1 (or empty for the configured size)"]),
        ({"calling_window_start": "08:00", "calling_window_end": "21:00", "excluded_weekdays": "sun"}, []),
        ({"calling_window_start": "08:00"}, ["calling_window_start and calling_window_end: set both or neither"]),
        ({"calling_window_start": "21:00", "calling_window_end": "08:00"},
         ["calling_window_start/calling_window_end: the window must end after it starts within one day "
          "(got 21:00-08:00)"]),
        ({"excluded_weekdays": "holidays"},
         ["excluded_weekdays: 'holidays' is not a weekday (use mon, tue, wed, thu, fri, sat, sun)"]),
    ],
)
def test_campaign_rules_name_the_column(fields, problems):
    row = dict(survey_id="1", instance_id="2", start_at=T0, end_at=T1, max_attempts=1, reattempt_wait=None)
    row.update(fields)
    assert campaign_problems(**row) == problems


# -- what the tick logs about an admin's row (scheduler/campaign_review.py) ------------

from types import SimpleNamespace  # noqa: E402

from scheduler import campaign_review  # noqa: E402


@pytest.mark.parametrize("seen, status, last_error, expected", [
    ("running", "paused", None, "campaign 3 (nps): running -> paused"),
    ("running", "paused", "HTTP 403: forbidden", "campaign 3 (nps): running -> paused: HTTP 403: forbidden"),
    # the stale typo message is not the reason for the new status
    ("running", "paused", "unknown status 'PAUSED': use one of draft, scheduled, paused, cancelled",
     "campaign 3 (nps): running -> paused"),
    ("paused", "scheduled", "HTTP 403: forbidden", "campaign 3 (nps): paused -> scheduled"),
    ("running", "completed_with_errors", "chunks not queued: 2 failed",
     "campaign 3 (nps): running -> completed_with_errors: chunks not queued: 2 failed"),
])
def test_status_change_lines(seen, status, last_error, expected):
    row = SimpleNamespace(id=3, name="nps", status=status, status_seen=seen, last_error=last_error)
    assert campaign_review.status_message(row) == expected
