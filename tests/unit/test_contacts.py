from pathlib import Path

import pytest

from scheduler.contacts import ContactParser, ContactsFileError, ContactsHeader, find_phone_column, iter_contacts
from scheduler.phones import Normaliser, full_normalise

CANDIDATES = ["phone_number", "destination", "phone", "number"]


@pytest.mark.parametrize(
    "raw, region, e164",
    [
        ("6175551234", "US", "+16175551234"),
        ("(617) 253-1000", "US", "+16172531000"),
        ("617.253.1000", "US", "+16172531000"),
        ("16172531000", "US", "+16172531000"),
        ("+1 617 253 1000", "US", "+16172531000"),
        ("tel:+16172531000", "US", "+16172531000"),
        ("tel:+16172531000;ani=5553336666", "US", "+16172531000"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
    ],
)
def test_normalise_to_e164(raw, region, e164):
    for normalise in (lambda r: full_normalise(r, region), Normaliser(region)):
        phone, reason = normalise(raw)
        assert phone == e164
        assert (reason is None) == (e164 is not None)


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "no phone number"),
        ("   ", "no phone number"),
        ("12345", "not a valid phone number: '12345'"),
        ("call me", "cannot parse 'call me'"),
        ("+999 123", "cannot parse '+999 123'"),
    ],
)
def test_invalid_numbers_say_why(raw, reason):
    for normalise in (lambda r: full_normalise(r, "US"), Normaliser("US")):
        phone, why = normalise(raw)
        assert phone is None and why.startswith(reason)


@pytest.mark.parametrize(
    "raw, extension",
    [
        ("617-200-0000 x12", "12"),
        ("617-200-0000 X12", "12"),
        ("617-200-0000 ext. 12", "12"),
        ("617-200-0000 ext 12", "12"),
        ("617-200-0000 extension 12", "12"),
        ("617-200-0000 #12", "12"),
        ("617-200-0000#12", "12"),
        ("617-200-0000;ext=12", "12"),
        ("+1 617 200 0000 x 7", "7"),
        ("(617) 200-0000, 12", "12"),
        ("tel:+16172000000;ext=12", "12"),
        ("tel:+16172000000;ani=5553336666;ext=12", "12"),
        ("+44 20 7946 0958 x3", "3"),
    ],
)
def test_a_number_with_an_extension_is_invalid_with_the_reason(raw, extension):
    reason = (f"has an extension (x{extension}): Plum dials the main number only; "
              "put the extension in another column or remove it")
    for normalise in (lambda r: full_normalise(r, "US"), Normaliser("US")):
        assert normalise(raw) == (None, reason)


@pytest.mark.parametrize("raw", ["617-200-0000 x", "tel:+16172000000;isub=12", "12345 x12"])
def test_what_is_not_an_extension_is_judged_as_before(raw):
    """No digits after x, an ISDN subaddress, and an invalid main number are not called extensions."""
    for normalise in (lambda r: full_normalise(r, "US"), Normaliser("US")):
        assert "extension" not in (normalise(raw)[1] or "")


def test_a_contact_with_an_extension_keeps_its_row_and_columns():
    contact = parser().parse(1, ["Ann", "617-200-0000 x12", "front desk"])
    assert (contact.status, contact.phone, contact.raw_phone) == ("invalid", None, "617-200-0000 x12")
    assert contact.extra == ("Ann", "front desk") and contact.reason.startswith("has an extension (x12)")


@pytest.mark.parametrize(
    "header, index",
    [
        (["name", "Phone_Number"], 1),
        (["DESTINATION", "phone"], 0),  # earlier candidate wins
        (["number", "phone"], 1),
        (["name", "email"], None),
    ],
)
def test_phone_column_found_by_name(header, index):
    assert find_phone_column(header, CANDIDATES) == index


def parser():
    return ContactParser(ContactsHeader(phone_index=1, phone_name="phone", extra_names=("name", "note")), "US")


def test_rows_keep_other_columns_in_order_and_find_duplicates():
    p = parser()
    first = p.parse(1, ["Zoë", "617-253-1000", 'says "hi", ok'])
    again = p.parse(2, ["Bo", "+1 (617) 253-1000", ""])
    bad = p.parse(3, ["Al", "nope", ""])
    short = p.parse(4, ["Cy", "212-736-5000"])
    assert (first.status, first.phone, first.extra) == ("pending", "+16172531000", ("Zoë", 'says "hi", ok'))
    assert (again.status, again.reason) == ("duplicate", "same number as row 1")
    assert bad.status == "invalid" and bad.phone is None
    assert short.extra == ("Cy", "")  # missing trailing cell padded


def test_a_row_with_extra_values_is_invalid_but_a_trailing_empty_cell_is_fine():
    p = parser()
    assert p.parse(1, ["A", "617-253-1000", "n", ""]).status == "pending"
    extra = p.parse(2, ["B", "212-736-5000", "n", "surprise"])
    assert extra.status == "invalid" and extra.reason == "row has 4 fields, the header has 3"


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "c.csv"
    path.write_bytes(data)
    return path


def test_bom_blank_lines_and_row_numbers(tmp_path):
    path = write(tmp_path, "\ufeffName,Phone\nA,617-253-1000\n\nB,x\n".encode())
    header, contacts = iter_contacts(path, CANDIDATES, "US")
    assert header.phone_name == "Phone" and header.extra_names == ("Name",)
    rows = list(contacts)
    assert [(c.row_number, c.status) for c in rows] == [(1, "pending"), (2, "invalid")]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"\n\n  \n", "is empty"),
        (b"\x00\x01\x02binary", "is binary"),
        ("phone\n617-253-1000\n".encode("utf-16"), "is binary"),
        (b"phone\n\xff\xfe617\n", "is not UTF-8"),
        (b"name,email\nA,a@b\n", "has no phone column"),
        (b",,\n1,2,3\n", "has no header row"),
    ],
)
def test_unusable_files(tmp_path, data, message):
    with pytest.raises(ContactsFileError, match=message):
        iter_contacts(write(tmp_path, data), CANDIDATES, "US")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ContactsFileError, match="does not exist"):
        iter_contacts(tmp_path / "nope.csv", CANDIDATES, "US")
    with pytest.raises(ContactsFileError, match="is a directory"):
        iter_contacts(tmp_path, CANDIDATES, "US")


def test_bad_bytes_after_the_sniffed_head_fail_with_their_line(tmp_path):
    data = b"phone\n" + b"617-253-1000\n" * 2000 + b"\xff\xff\n"
    header, contacts = iter_contacts(write(tmp_path, data), CANDIDATES, "US")
    with pytest.raises(ContactsFileError, match="is not UTF-8 text at line 2002 "):
        list(contacts)


@pytest.mark.parametrize(
    "values",
    [(), ("",), ("a",), ("a", "b"), ("", ""), ("Zoë", 'says "hi", ok', ""), ("x\x1fy", "z"), ("\x1estart", "b"),
     ("[1, 2]",), ("multi\nline", "tab\there")],
)
def test_extra_columns_round_trip(values):
    from scheduler.contacts import pack_extra, unpack_extra

    assert unpack_extra(pack_extra(values), len(values)) == list(values)
