import pytest

from scheduler.callbacks import MalformedCallback, parse_call_details, sign, signature_ok, signed_url
from scheduler.export import neutralise


@pytest.mark.parametrize(
    "cell, out",
    [
        ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"),
        ("+1 617 253 1000", "'+1 617 253 1000"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("Zoë", "Zoë"),
        ("a=b", "a=b"),
        ("", ""),
        (None, ""),
    ],
)
def test_formula_cells_are_neutralised(cell, out):
    assert neutralise(cell) == out


def test_signed_urls_verify_only_for_their_own_path():
    url = signed_url("https://cb.example/base/", "s3cret", 7, 42)
    assert url.startswith("https://cb.example/base/callbacks/7/42?sig=")
    sig = url.rsplit("=", 1)[1]
    assert signature_ok("s3cret", "/callbacks/7/42", sig)
    assert not signature_ok("s3cret", "/callbacks/7/43", sig)
    assert not signature_ok("other", "/callbacks/7/42", sig)
    assert not signature_ok("s3cret", "/callbacks/7/42", None)
    assert sign("s3cret", "/x") != sign("s3cret", "/y")


@pytest.mark.parametrize(
    "body, content_type, status, duration, phone",
    [
        (b'{"status": "completed", "duration": 31, "phone_number": "+16172531000"}', "application/json",
         "completed", 31, "+16172531000"),
        (b"status=failed&attempts=3&destination=6172531000", "application/x-www-form-urlencoded", "failed", None,
         "6172531000"),
        (b'{"status": "CANCELED", "events": [{"event": "queued", "timestamp": 1}]}', "text/plain", "canceled", None,
         None),
    ],
)
def test_call_details_in_json_or_form(body, content_type, status, duration, phone):
    details = parse_call_details(body, content_type)
    assert (details.status, details.duration_seconds, details.phone) == (status, duration, phone)


@pytest.mark.parametrize(
    "body",
    [b"{broken", b"[1, 2]", b'{"attempts": 1}', b"\xff\xfe", b'{"status": "completed", "duration": "long"}'],
)
def test_malformed_call_details(body):
    with pytest.raises(MalformedCallback):
        parse_call_details(body, "application/json")
