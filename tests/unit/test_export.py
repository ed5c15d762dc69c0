from types import SimpleNamespace

import pytest

from scheduler.callbacks import MalformedCallback, parse_call_details, sign, signature_ok, signed_url
from scheduler.export import neutralise, write_export


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


class _Repo:
    """Enough of Repository for write_export: one campaign, rows that may fail half-way."""

    def __init__(self, rows, fail_after=None):
        self.rows, self.fail_after = rows, fail_after

    async def get_campaign(self, campaign_id):
        return SimpleNamespace(contacts_header='{"extra": ["name"]}')

    async def export_rows(self, campaign_id):
        for index, row in enumerate(self.rows):
            if index == self.fail_after:
                raise ConnectionError("database went away")
            yield row


def _row(number):
    return SimpleNamespace(row_number=number, raw_phone=f"617555000{number}", phone=f"+1617555000{number}",
                           status="queued", reason=None, seq=1, outcome="succeeded", status_code=200,
                           call_status=None, duration_seconds=None, extra=f"name{number}")


async def test_export_replaces_the_file_only_when_complete(tmp_path):
    out = tmp_path / "report.csv"
    out.write_text("the previous report\n")
    assert await write_export(_Repo([_row(1), _row(2)]), 1, out) == 2
    lines = out.read_text().splitlines()
    assert lines[0].startswith("row_number,original_number") and lines[0].endswith(",name")
    assert lines[2].startswith("2,6175550002,+16175550002,queued")
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


async def test_a_failed_export_leaves_no_half_file(tmp_path):
    out = tmp_path / "report.csv"
    with pytest.raises(ConnectionError):
        await write_export(_Repo([_row(1), _row(2)], fail_after=1), 1, out)
    assert list(tmp_path.iterdir()) == []
    out.write_text("the previous report\n")
    with pytest.raises(ConnectionError):
        await write_export(_Repo([_row(1), _row(2)], fail_after=1), 1, out)
    assert out.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]
