"""Contacts CSV in, normalised rows out. Streamed: the file is never loaded whole.

Every data row becomes exactly one ``ParsedContact``: valid (E.164 number),
``invalid`` (with the reason) or ``duplicate`` (with the first row's number),
so rows = valid + invalid + duplicate always holds; and every line of the file
is the header, a row or a blank line. A file that cannot be read that way
(an unclosed quote, unnamed or repeated columns) is refused with the line or
column to fix. Comma, semicolon and tab separated files are read.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Protocol, Sequence

from .errors import SchedulerError
from .phones import NanpPrefix, Normaliser

SNIFF_BYTES = 8192
# Tried in this order; a comma file reads as it always did.
DELIMITERS = (",", ";", "\t")
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab"}
_SEPARATOR_WORDS = {",": "comma", ";": "semicolon", "\t": "tab"}


# How a contact's other columns are stored (contacts.extra): joined by the ASCII
# unit separator, ~10x cheaper than JSON for a million rows; values that contain
# a separator themselves fall back to JSON behind a record-separator mark.
_UNIT, _RECORD = "\x1f", "\x1e"
PACKED_UNIT, PACKED_RECORD = _UNIT, _RECORD  # how other columns are packed (chunking writes them back)


def pack_extra(values: Sequence[str]) -> str:
    joined = _UNIT.join(values)
    if _RECORD in joined or joined.count(_UNIT) != max(0, len(values) - 1):
        return _RECORD + json.dumps(list(values), ensure_ascii=False)
    return joined


def unpack_extra(text: str | None, count: int) -> list[str]:
    if not text:
        return [""] * count
    if text.startswith(_RECORD):
        values: list[str] = json.loads(text[1:])
        return values
    return text.split(_UNIT) if count else []


class CsvReader(Protocol):
    """What ``csv.reader`` returns (its type is private)."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...
    def __next__(self) -> list[str]: ...


class ContactsFileError(SchedulerError):
    """The file cannot be used at all; the message is what the admin reads."""


class ParsedContact(NamedTuple):
    # A NamedTuple, not a dataclass: a million of these are made per large file.
    row_number: int  # 1 = the first row after the header
    raw_phone: str
    phone: str | None  # E.164 when valid
    extra: tuple[str, ...]  # the row's other columns, in header order
    status: str  # pending | invalid | duplicate
    reason: str | None = None
    prefix: NanpPrefix | None = None  # the normaliser's (Normaliser.judge): ingestion finds the zones there


@dataclass(frozen=True)
class ContactsHeader:
    phone_index: int
    phone_name: str
    extra_names: tuple[str, ...]


def find_phone_column(header: Sequence[str], candidates: Sequence[str]) -> int | None:
    lowered = [name.strip().lower() for name in header]
    for candidate in candidates:
        if candidate.lower() in lowered:
            return lowered.index(candidate.lower())
    return None


def open_contacts(path: Path, cwd_name: str = "the working directory") -> io.TextIOWrapper:
    """Open for streaming, refusing what is plainly not a UTF-8 CSV."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise ContactsFileError(f"contacts file {path} does not exist{_where_relative(path, cwd_name)}") from None
    except IsADirectoryError:
        raise ContactsFileError(f"contacts file {path} is a directory, not a CSV file") from None
    except OSError as exc:
        raise ContactsFileError(f"contacts file {path} cannot be read: {exc.strerror or exc}") from None
    head = raw.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(raw, "peek") else b""
    problem = _sniff_problem(head)
    if problem:
        raw.close()
        raise ContactsFileError(f"contacts file {path} {problem}")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _where_relative(path: Path, cwd_name: str) -> str:
    # A path written in a campaign row is read by a daemon whose working directory the admin may not know.
    if str(path).startswith("~"):
        return " (~ is not expanded: write an absolute path)"
    if path.is_absolute():
        return ""
    return f" (relative paths are read from {cwd_name} {Path.cwd()}; write an absolute path)"


def _sniff_problem(head: bytes) -> str | None:
    if not head.strip():
        return "is empty"
    if b"\x00" in head:
        return "is binary, not a CSV text file (it contains NUL bytes)"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text (bad byte at offset {exc.start}); save it as CSV UTF-8"
    return None


def choose_delimiter(first_line: str, candidates: Sequence[str]) -> str:
    """The first of DELIMITERS that makes the header name a phone column; failing
    that, the one that splits the header into the most columns (for the message)."""
    split = {d: _split(first_line, d) for d in DELIMITERS}
    for delimiter, names in split.items():
        if find_phone_column(names, candidates) is not None:
            return delimiter
    return max(DELIMITERS, key=lambda d: len(split[d]))


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:  # a header line over the field size limit: read_header reports it
        return []


def read_header(reader: CsvReader, path: Path, candidates: Sequence[str], delimiter: str = ",") -> ContactsHeader:
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise ContactsFileError(f"contacts file {path} has no header row")
    if reader.line_num > 1:
        raise spans_lines_error(path, 1, reader)
    index = find_phone_column(header, candidates)
    if index is None:
        raise ContactsFileError(
            f"contacts file {path} has no phone column: looked for {', '.join(candidates)} "
            f"(case-insensitive), found header {', '.join(repr(h) for h in header)} "
            f"({_delimiter_hint(header, delimiter)}); name the phone column one of those "
            "or add its name to contacts.phone_columns"
        )
    problem = header_names_problem(header, delimiter)
    if problem:
        raise ContactsFileError(f"contacts file {path}: {problem}")
    extra = tuple(name for i, name in enumerate(header) if i != index)
    return ContactsHeader(phone_index=index, phone_name=header[index], extra_names=extra)


def _delimiter_hint(header: Sequence[str], delimiter: str) -> str:
    if len(header) == 1:
        return "the header has one column: no ',', ';' or tab separates names"
    return f"the header looks {_DELIMITER_NAMES[delimiter]}-separated"


def header_names_problem(header: Sequence[str], delimiter: str = ",") -> str | None:
    """Why these column names cannot be used as they are, or None."""
    empty = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if empty:
        trailing = f" (a trailing {_SEPARATOR_WORDS[delimiter]}?)" if empty[-1] == len(header) else ""
        if len(empty) == 1:
            return f"header column {empty[0]} has no name{trailing}; name it or delete the column"
        return f"header columns {_and(empty)} have no name{trailing}; name them or delete the columns"
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        positions.setdefault(name.strip().lower(), []).append(i + 1)
    repeated = [where for where in positions.values() if len(where) > 1]
    if not repeated:
        return None
    return "; ".join(_repeated_name(header, where) for where in repeated) + "; every column needs its own name"


def _repeated_name(header: Sequence[str], where: list[int]) -> str:
    spellings = [header[i - 1] for i in where]
    named = f"named {spellings[0].strip()!r}"
    if len(set(spellings)) > 1:
        named += f" (written {', '.join(repr(s) for s in spellings)}; names are compared ignoring case and spaces)"
    return f"header columns {_and(where)} are {'both' if len(where) == 2 else 'all'} {named}"


def _and(numbers: list[int]) -> str:
    text = [str(n) for n in numbers]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " and " + text[-1]


def spans_lines_error(path: Path, first_line: int, reader: CsvReader) -> ContactsFileError:
    """A record from ``first_line`` to the reader's line (or holding a line break at the
    end of the file): the first line break in it is inside a quoted field that no
    earlier line break precedes, so that field's quote opened on ``first_line``."""
    last_line = reader.line_num
    try:
        at_end = next(reader, None) is None
    except (csv.Error, UnicodeDecodeError):
        at_end = False
    if last_line == first_line:
        runs = "it runs to the end of the file"
    elif at_end:
        runs = f"it runs to line {last_line}, the end of the file"
    else:
        runs = f"it runs on to line {last_line}, so lines {first_line}-{last_line} would be read as one contact"
    return ContactsFileError(
        f"contacts file {path}: line {first_line}: a quoted field opens here and is not closed on its line "
        f"({runs}); every contact must be on one line: close or remove the quote"
        + ("" if at_end else ", or remove the line break inside it")
    )


def _csv_error(path: Path, first_line: int, reader: CsvReader, exc: csv.Error) -> ContactsFileError:
    if reader.line_num > first_line:
        return ContactsFileError(
            f"contacts file {path}: line {first_line}: a quoted field opens here and is not closed on its line "
            f"(it runs on past line {reader.line_num}: {exc}); every contact must be on one line: "
            "close or remove the quote"
        )
    return ContactsFileError(f"contacts file {path} is not valid CSV at line {first_line}: {exc}")


def not_utf8_error(path: Path, lines_read: int, exc: UnicodeDecodeError) -> ContactsFileError:
    """The decoder fails a whole read-ahead block at once, so the line is found by reading again."""
    line = _first_undecodable_line(path)
    where = f"at line {line}" if line else f"after line {lines_read}"
    return ContactsFileError(f"contacts file {path} is not UTF-8 text {where} ({exc.reason}); save it as CSV UTF-8")


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _first_undecodable_line(path: Path) -> int | None:
    # surrogateescape turns each undecodable byte into a lone surrogate, which valid UTF-8 never yields.
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            for number, text in enumerate(handle, 1):
                if _ESCAPED_BYTE.search(text):
                    return number
    except OSError:
        pass
    return None


class ContactParser:
    """Turns data rows into ParsedContacts, remembering numbers already seen."""

    def __init__(self, header: ContactsHeader, region: str, normaliser: Normaliser | None = None) -> None:
        self.header = header
        self.region = region
        self.width = len(header.extra_names) + 1
        self.normalise = normaliser or Normaliser(region)
        # Keyed by the number as an int: a million contacts fit in ~100 MB, not ~200.
        self.first_row_of: dict[int, int] = {}

    def parse(self, row_number: int, row: list[str]) -> ParsedContact:
        index, width = self.header.phone_index, self.width
        raw = row[index] if index < len(row) else ""
        extra = tuple(row[:index] + row[index + 1 : width])
        if len(extra) < width - 1:
            extra += ("",) * (width - 1 - len(extra))
        if len(row) > width and any(value.strip() for value in row[width:]):
            reason = f"row has {len(row)} fields, the header has {width}"
            return ParsedContact(row_number, raw, None, extra, "invalid", reason)
        phone, why, prefix = self.normalise.judge(raw)
        if phone is None:
            return ParsedContact(row_number, raw, None, extra, "invalid", why)
        first = self.first_row_of.setdefault(int(phone[1:]), row_number)
        if first != row_number:
            return ParsedContact(row_number, raw, phone, extra, "duplicate", f"same number as row {first}")
        return ParsedContact(row_number, raw, phone, extra, "pending", None, prefix)


def iter_contacts(
    path: Path, candidates: Sequence[str], region: str, normaliser: Normaliser | None = None,
    cwd_name: str = "the working directory",
) -> tuple[ContactsHeader, ContactStream]:
    """The header (checked now) and a lazy stream of parsed contacts.

    ``cwd_name`` says whose working directory a relative path is read from, for the message.
    """
    handle = open_contacts(path, cwd_name)
    try:
        reader, header = _read_header(handle, path, candidates)
    except BaseException:
        handle.close()
        raise
    return header, ContactStream(handle, reader, path, ContactParser(header, region, normaliser))


def _read_header(handle: io.TextIOWrapper, path: Path, candidates: Sequence[str]) -> tuple[CsvReader, ContactsHeader]:
    try:
        first_line = handle.readline()
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, 0, exc) from None
    delimiter = choose_delimiter(first_line, candidates)
    reader = csv.reader(itertools.chain((first_line,), handle), delimiter=delimiter)
    try:
        return reader, read_header(reader, path, candidates, delimiter)
    except UnicodeDecodeError as exc:  # a header that runs on past the sniffed head
        raise not_utf8_error(path, 0, exc) from None
    except csv.Error as exc:
        raise _csv_error(path, 1, reader, exc) from None


class ContactStream:
    """The file's contacts, one per data line, read lazily.

    Every physical line is accounted for: line 1 is the header, and each later
    line is a contact or one of ``blank_lines`` (final once the stream is read).
    A record that spans lines is refused: it is almost always an unclosed quote,
    which would otherwise swallow the rest of the file into one field.
    """

    def __init__(self, handle: io.TextIOWrapper, reader: CsvReader, path: Path, parser: ContactParser) -> None:
        self.blank_lines = 0
        self._rows = self._read(handle, reader, path, parser)

    def __iter__(self) -> Iterator[ParsedContact]:
        return self._rows

    def __next__(self) -> ParsedContact:
        return next(self._rows)

    def _read(self, handle: io.TextIOWrapper, reader: CsvReader, path: Path,
              parser: ContactParser) -> Iterator[ParsedContact]:
        row_number, line, row = 0, reader.line_num + 1, []  # line: where the next record starts
        try:
            for row in reader:
                if reader.line_num != line:
                    raise spans_lines_error(path, line, reader)
                line += 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    self.blank_lines += 1
                    continue
                row_number += 1
                yield parser.parse(row_number, row)
            # Only an unclosed quote on the last line can put a line break in a one-line record.
            if row and row[-1].endswith(("\n", "\r")):
                raise spans_lines_error(path, line - 1, reader)
        except UnicodeDecodeError as exc:
            raise not_utf8_error(path, line - 1, exc) from None
        except csv.Error as exc:
            raise _csv_error(path, line, reader, exc) from None
        finally:
            handle.close()
