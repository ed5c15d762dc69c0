"""Contacts files as spreadsheets write them: every line read exactly once, or the file refused with the
line or column to fix. Files are written the way Excel writes them (BOM, CRLF, quoted fields)."""

from pathlib import Path

import pytest

from scheduler.contacts import ContactsFileError, choose_delimiter, header_names_problem, iter_contacts

CANDIDATES = ["phone_number", "destination", "phone", "number"]
NUMBERS = [f"617-200-{i:04d}" for i in range(50)]


def excel(lines: list[str], eol: str = "\r\n", bom: bool = True) -> bytes:
    return (("\ufeff" if bom else "") + eol.join(lines) + eol).encode()


def fifty(quoted_notes: bool = False, **replace: str) -> list[str]:
    """A header and 50 contacts; ``line12="..."`` replaces physical line 12."""
    note = '"says ""hi"", ok"' if quoted_notes else "note"
    lines = ["phone_number,name,note"] + [f"{n},Ann {i},{note}" for i, n in enumerate(NUMBERS)]
    for key, text in replace.items():
        lines[int(key.removeprefix("line")) - 1] = text
    return lines


def read(tmp_path: Path, data: bytes):
    path = tmp_path / "c.csv"
    path.write_bytes(data)
    header, stream = iter_contacts(path, CANDIDATES, "US")
    return header, list(stream), stream.blank_lines


def refusal(tmp_path: Path, data: bytes) -> str:
    with pytest.raises(ContactsFileError) as caught:
        read(tmp_path, data)
    return str(caught.value)


# -- quotes that run past their line ---------------------------------------------------

UNCLOSED = "a quoted field opens here and is not closed on its line"


@pytest.mark.parametrize(
    "data, where",
    [
        (excel(fifty(line12='617-200-0010,"Ann 10')),
         "line 12: " + UNCLOSED + " (it runs to line 51, the end of the file); "
         "every contact must be on one line: close or remove the quote"),
        (excel(fifty(line12='617-200-0010,"Ann 10'), eol="\n", bom=False),
         "line 12: " + UNCLOSED + " (it runs to line 51"),
        (excel(fifty(line12='617-200-0010,Ann,"two\r\nlines"')),
         "line 12: " + UNCLOSED + " (it runs on to line 13, so lines 12-13 would be read as one contact); every "
         "contact must be on one line: close or remove the quote, or remove the line break inside it"),
        (excel(fifty(quoted_notes=True, line12='617-200-0010,"Ann 10,x')),  # the next line's quote closes it
         "line 12: " + UNCLOSED + " (it runs on to line 13, so lines 12-13 would be read as one contact)"),
        (excel(fifty(line51='617-200-0049,"Ann 49')), "line 51: " + UNCLOSED + " (it runs to the end of the file)"),
        (excel(['phone_number,"name', "617-200-0000,Ann"]), "line 1: " + UNCLOSED),
        (excel(fifty(line2='"617-200-0000,Ann 0,x')), "line 2: " + UNCLOSED + " (it runs to line 51"),
        (excel(["phone_number,name", "", "617-200-0000,Ann", "", '617-200-0001,"Bo', "617-200-0002,Cy"]),
         "line 5: " + UNCLOSED + " (it runs to line 6, the end of the file)"),  # blank lines count as lines
    ],
    ids=["excel", "lf-no-bom", "line-break-in-field", "closed-by-a-later-quote", "last-line", "header", "first-field",
         "after-blank-lines"],
)
def test_a_quote_left_open_fails_the_file_naming_the_line_it_opened_on(tmp_path, data, where):
    assert where in refusal(tmp_path, data)


def test_a_runaway_quote_in_a_large_file_names_its_line_not_the_csv_field_limit(tmp_path):
    lines = ["phone_number,name"] + [f"617-200-{i % 10000:04d},Ann {i}" for i in range(20000)]
    lines[11] = '617-200-0010,"Ann 10'
    message = refusal(tmp_path, excel(lines))
    assert f"line 12: {UNCLOSED} (it runs on past line " in message
    assert "field larger than field limit" in message


def test_a_field_over_the_size_limit_on_one_line_names_the_line(tmp_path):
    message = refusal(tmp_path, excel(["phone_number,name", "617-200-0000,Ann", "617-200-0001," + "x" * 200_000]))
    assert "is not valid CSV at line 3: field larger than field limit" in message


def test_quotes_that_close_on_their_line_are_read_as_written(tmp_path):
    lines = fifty(quoted_notes=True, line2='617-200-0000,"Smith, Ann","a ""quoted"" note"')
    _, contacts, _ = read(tmp_path, excel(lines))
    assert len(contacts) == 50 and all(c.status == "pending" for c in contacts)
    assert contacts[0].extra == ("Smith, Ann", 'a "quoted" note')
    assert contacts[1].extra == ("Ann 1", 'says "hi", ok')


# -- header names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, delimiter, problem",
    [
        (["phone_number", "name"], ",", None),
        (["phone_number", "name", ""], ",",
         "header column 3 has no name (a trailing comma?); name it or delete the column"),
        (["phone_number", "name", " "], ";", "header column 3 has no name (a trailing semicolon?)"),
        (["phone_number", "", "name"], ",", "header column 2 has no name; name it or delete the column"),
        (["phone_number", "name", "", ""], ",",
         "header columns 3 and 4 have no name (a trailing comma?); name them or delete the columns"),
        (["phone_number", "name", "name"], ",",
         "header columns 2 and 3 are both named 'name'; every column needs its own name"),
        (["Name", "phone_number", " name "], ",", "header columns 1 and 3 are both named 'Name' (written 'Name', "
         "' name '; names are compared ignoring case and spaces)"),
        (["a", "phone", "a", "a", "phone"], ",",
         "header columns 1, 3 and 4 are all named 'a'; header columns 2 and 5 are both named 'phone'"),
    ],
)
def test_header_names_must_be_present_and_distinct(header, delimiter, problem):
    found = header_names_problem(header, delimiter)
    assert found == problem if problem is None else found.startswith(problem)


@pytest.mark.parametrize(
    "lines, message",
    [
        (["phone_number,name,", "617-200-0000,Ann,"], "c.csv: header column 3 has no name (a trailing comma?)"),
        (["phone_number,name,name", "617-200-0000,Ann,Bo"], "c.csv: header columns 2 and 3 are both named 'name'"),
        (["phone_number;name;", "617-200-0000;Ann;"], "c.csv: header column 3 has no name (a trailing semicolon?)"),
    ],
)
def test_a_file_with_unnamed_or_repeated_columns_is_refused(tmp_path, lines, message):
    assert message in refusal(tmp_path, excel(lines))


# -- delimiters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first_line, delimiter",
    [
        ("phone_number,name\r\n", ","),
        ("phone_number;name\r\n", ";"),
        ("phone_number\tname\r\n", "\t"),
        ("phone_number\r\n", ","),
        ('"name; full",phone\r\n', ","),  # a ';' inside a quoted name does not split it
        ('"name, full";phone\r\n', ";"),
        ("first name\tphone, mobile\tphone\n", "\t"),
        ("phone_number,note;x\r\n", ","),  # comma first when both work
        ("name;email\r\n", ";"),  # no phone column: the one that splits most, for the message
        ("name\temail\r\n", "\t"),
        ("name\r\n", ","),
    ],
)
def test_the_delimiter_is_the_one_that_finds_the_phone_column(first_line, delimiter):
    assert choose_delimiter(first_line, CANDIDATES) == delimiter


@pytest.mark.parametrize(
    "lines",
    [
        ["name;phone_number;note", '"Smith, Ann";617-200-0000;"a; b"', "Bo;617-200-0001;", ";617-200-0002;x,y"],
        ["name\tphone_number\tnote", '"Smith, Ann"\t617-200-0000\ta; b', "Bo\t617-200-0001\t", "\t617-200-0002\tx,y"],
    ],
    ids=["semicolon", "tab"],
)
def test_semicolon_and_tab_separated_files_are_read_whole(tmp_path, lines):
    header, contacts, blank = read(tmp_path, excel(lines))
    assert (header.phone_name, header.extra_names) == ("phone_number", ("name", "note"))
    assert [(c.phone, c.extra, c.status) for c in contacts] == [
        ("+16172000000", ("Smith, Ann", "a; b"), "pending"),
        ("+16172000001", ("Bo", ""), "pending"),
        ("+16172000002", ("", "x,y"), "pending"),
    ]


@pytest.mark.parametrize(
    "lines, hint",
    [
        (["name;tel", "Ann;617-200-0000"], "found header 'name', 'tel' (the header looks ';'-separated)"),
        (["name\ttel", "Ann\t617-200-0000"], "found header 'name', 'tel' (the header looks tab-separated)"),
        (["name,email", "A,a@b"], "found header 'name', 'email' (the header looks ','-separated)"),
        (["tel", "617-200-0000"], "found header 'tel' (the header has one column: no ',', ';' or tab separates names)"),
    ],
)
def test_no_phone_column_names_the_delimiter_seen_and_the_setting(tmp_path, lines, hint):
    message = refusal(tmp_path, excel(lines))
    assert "has no phone column: looked for phone_number, destination, phone, number (case-insensitive), " in message
    assert hint in message
    assert message.endswith("; name the phone column one of those or add its name to contacts.phone_columns")


# -- every line accounted for ----------------------------------------------------------


@pytest.mark.parametrize(
    "data, rows, blank",
    [
        (excel(fifty()), 50, 0),
        (excel(fifty()[:3] + ["", "  ", ""] + fifty()[3:] + ["", ""]), 50, 5),
        ("\n".join(fifty()[:11] + [""] * 3 + fifty()[11:]).encode(), 50, 3),  # no newline at the end
        ("\r".join(fifty()[:5] + [""] + fifty()[5:]).encode(), 50, 1),  # old Mac line endings
        (excel(["phone_number;name", "617-200-0000;Ann", "", ";", "617-200-0001;Bo"]), 3, 1),  # ';' is a row
    ],
)
def test_rows_and_blank_lines_add_up_to_every_line_after_the_header(tmp_path, data, rows, blank):
    physical_lines = len(data.decode("utf-8-sig").splitlines())
    _, contacts, blank_lines = read(tmp_path, data)
    assert (len(contacts), blank_lines) == (rows, blank)
    assert len(contacts) + blank_lines + 1 == physical_lines


# -- where a relative path is read from ------------------------------------------------


def test_a_missing_relative_path_names_the_directory_it_was_read_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ContactsFileError) as caught:
        iter_contacts(Path("data/c.csv"), CANDIDATES, "US", cwd_name="the daemon's working directory")
    assert str(caught.value) == (f"contacts file data/c.csv does not exist (relative paths are read from the "
                                 f"daemon's working directory {tmp_path}; write an absolute path)")


@pytest.mark.parametrize(
    "path, message",
    [
        ("/nowhere/c.csv", "contacts file /nowhere/c.csv does not exist"),
        ("~/c.csv", "contacts file ~/c.csv does not exist (~ is not expanded: write an absolute path)"),
    ],
)
def test_a_missing_absolute_or_home_path(path, message):
    with pytest.raises(ContactsFileError) as caught:
        iter_contacts(Path(path), CANDIDATES, "US")
    assert str(caught.value) == message
