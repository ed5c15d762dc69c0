from datetime import datetime, timezone

import pytest

from scheduler.config import InsightSettings
from scheduler.errors import InvalidRequest
from scheduler.insight import Answer, BulkQueueRequest, check_request, classify, excerpt, parse_answer, parse_retry_after
from scheduler.models import Outcome


@pytest.mark.parametrize(
    "body, answer",
    [
        ('{"success": true}', Answer(True, None)),
        ('{"success":false,"error":"attempts can only be an integer between 1 and 10."}',
         Answer(False, "attempts can only be an integer between 1 and 10.")),
        ("{'success':true}", Answer(True, None)),
        ("{'success':false,'error':'attempts can only be an integer between 1 and 10.'}",
         Answer(False, "attempts can only be an integer between 1 and 10.")),
        ("{'success':false,'error':'it\\'s broken, really'}", Answer(False, "it\\'s broken, really")),
        ("<result>\n  <success>true</success>\n</result>", Answer(True, None)),
        ("<result><success>false</success><error>bad csv</error></result>", Answer(False, "bad csv")),
        ("<?xml version='1.0'?><result><success>1</success></result>", Answer(True, None)),
        ("<result><success>false</success>", Answer(None, None)),  # broken XML
        ("<html><body>502 Bad Gateway</body></html>", Answer(None, None)),
        ("Internal Server Error", Answer(None, None)),
        ("", Answer(None, None)),
        ("[1, 2]", Answer(None, None)),
        ('{"success": "yes"}', Answer(None, None)),
    ],
)
def test_parse_answer_in_every_form(body, answer):
    assert parse_answer(body) == answer


YES, NO, UNREADABLE = Answer(True), Answer(False, "refused"), Answer()


@pytest.mark.parametrize(
    "status, answer, outcome",
    [
        (200, YES, Outcome.ACCEPTED),
        (200, UNREADABLE, Outcome.ACCEPTED),
        (200, NO, Outcome.REJECTED),
        (400, NO, Outcome.REJECTED),
        (400, UNREADABLE, Outcome.REJECTED),
        (401, NO, Outcome.AUTH),
        (403, NO, Outcome.AUTH),
        (404, NO, Outcome.CAMPAIGN_INVALID),
        (409, NO, Outcome.CAMPAIGN_INVALID),
        (405, UNREADABLE, Outcome.CLIENT_BUG),
        (415, NO, Outcome.CLIENT_BUG),
        (301, UNREADABLE, Outcome.CLIENT_BUG),
        (500, NO, Outcome.RETRYABLE),
        (503, UNREADABLE, Outcome.RETRYABLE),
        (429, UNREADABLE, Outcome.RETRYABLE),
        (502, UNREADABLE, Outcome.UNKNOWN),
        (504, UNREADABLE, Outcome.UNKNOWN),
        (418, UNREADABLE, Outcome.REJECTED),
        (422, NO, Outcome.REJECTED),
        (501, UNREADABLE, Outcome.UNKNOWN),
        (599, UNREADABLE, Outcome.UNKNOWN),
    ],
)
def test_classification_table(status, answer, outcome):
    assert classify(status, answer) is outcome


NOW = datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "header, seconds",
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Tue, 01 Dec 2026 14:01:30 GMT", 90.0),
        ("Tue, 01 Dec 2026 13:00:00 GMT", 0.0),  # in the past: retry now
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after_seconds_or_http_date(header, seconds):
    assert parse_retry_after(header, NOW) == seconds


def test_excerpt_is_bounded():
    assert excerpt("x" * 10) == "x" * 10
    assert len(excerpt("x" * 10_000)) == 503


SETTINGS = InsightSettings()
CSV = b"phone_number,name\n+16175551234,Ann\n"


def req(**overrides) -> BulkQueueRequest:
    fields = dict(survey_id="1", instance_id="2", csv_bytes=CSV, start_timestamp=100, end_timestamp=200,
                  max_attempts=1)
    fields.update(overrides)
    return BulkQueueRequest(**fields)


@pytest.mark.parametrize(
    "overrides, field, rule",
    [
        ({"max_attempts": 0}, "max_attempts", "between 1 and 10"),
        ({"max_attempts": 11}, "max_attempts", "between 1 and 10"),
        ({"max_attempts": 3}, "reattempt_wait", "required when max_attempts > 1"),
        ({"max_attempts": 3, "reattempt_wait": 30}, "reattempt_wait", "between 60 and 86400"),
        ({"end_timestamp": 100}, "end_timestamp", "must be after start_timestamp"),
        ({"csv_bytes": b""}, "csv", "must not be empty"),
        ({"csv_bytes": b"number,name\n1,2\n"}, "csv", "first header must be 'phone_number' (found 'number')"),
        ({"csv_bytes": b"phone_number,name\n"}, "csv", "has a header but no contacts"),
        ({"csv_bytes": b"\xff\xfe\x00p"}, "csv", "must be UTF-8"),
        ({"survey_id": ""}, "survey_id", "must not be empty"),
    ],
)
def test_request_rules_name_the_field(overrides, field, rule):
    with pytest.raises(InvalidRequest) as info:
        check_request(req(**overrides), SETTINGS)
    assert info.value.field == field
    assert rule in info.value.rule


def test_valid_requests_pass():
    check_request(req(), SETTINGS)
    check_request(req(max_attempts=3, reattempt_wait=600), SETTINGS)
    check_request(req(csv_bytes=b"\xef\xbb\xbfphone_number\n+16175551234\n"), SETTINGS)
    check_request(req(csv_bytes=b"destination\n1\n"), InsightSettings(phone_column="destination"))


def test_form_fields_omit_unset_values_and_send_strings():
    fields = req(max_attempts=None, end_timestamp=None, result_url="https://r.example/x").form_fields()
    assert fields == {"start_timestamp": "100", "result_url": "https://r.example/x"}
