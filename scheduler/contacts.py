"""Contacts CSV in, normalised rows out. Streamed: the file is never loaded whole.

Every data row becomes exactly one ``ParsedContact``: valid (E.164 number),
``invalid`` (with the reason) or ``duplicate`` (with the first row's number),
so rows = valid + invalid + duplicate always holds.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from .errors import SchedulerError
from .phones import Normaliser

SNIFF_BYTES = 8192


# How a contact's other columns are stored (contacts.extra): joined by the ASCII
# unit separator, ~10x cheaper than JSON for a million rows; values that contain
# a separator themselves fall back to JSON behind a record-separator mark.
_UNIT, _RECORD = "\x1f", "\x1e"


def pack_extra(values: Sequence[str]) -> str:
    joined = _UNIT.join(values)
    if _RECORD in joined or joined.count(_UNIT) != max(0, len(values) - 1):
        return _RECORD + json.dumps(list(values), ensure_ascii=False)
    return joined


def unpack_extra(text: str | None, count: int) -> list[str]:
    if not text:
        return [""] * count
    if text.startswith(_RECORD):
        return json.loads(text[1:])
    return text.split(_UNIT) if count else []


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


def open_contacts(path: Path) -> io.TextIOWrapper:
    """Open for streaming, refusing what is plainly not a UTF-8 CSV."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise ContactsFileError(f"contacts file {path} does not exist") from None
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


def read_header(reader: Iterator[list[str]], path: Path, candidates: Sequence[str]) -> ContactsHeader:
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise ContactsFileError(f"contacts file {path} has no header row")
    index = find_phone_column(header, candidates)
    if index is None:
        raise ContactsFileError(
            f"contacts file {path} has no phone column: looked for {', '.join(candidates)} "
            f"(case-insensitive), found header {', '.join(repr(h) for h in header)}"
        )
    extra = tuple(name for i, name in enumerate(header) if i != index)
    return ContactsHeader(phone_index=index, phone_name=header[index], extra_names=extra)


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
        phone, reason = self.normalise(raw)
        if phone is None:
            return ParsedContact(row_number, raw, None, extra, "invalid", reason)
        first = self.first_row_of.setdefault(int(phone[1:]), row_number)
        if first != row_number:
            return ParsedContact(row_number, raw, phone, extra, "duplicate", f"same number as row {first}")
        return ParsedContact(row_number, raw, phone, extra, "pending")


def iter_contacts(
    path: Path, candidates: Sequence[str], region: str, normaliser: Normaliser | None = None,
) -> tuple[ContactsHeader, Iterator[ParsedContact]]:
    """The header (checked now) and a lazy stream of parsed contacts."""
    handle = open_contacts(path)
    try:
        reader = csv.reader(handle)
        header = read_header(reader, path, candidates)
    except UnicodeDecodeError as exc:
        handle.close()
        raise ContactsFileError(f"contacts file {path} is not UTF-8 text: {exc.reason}") from None
    except BaseException:
        handle.close()
        raise
    return header, _rows(handle, reader, path, ContactParser(header, region, normaliser))


def _rows(handle: io.TextIOWrapper, reader: Iterator[list[str]], path: Path, parser: ContactParser) -> Iterator[ParsedContact]:
    row_number = 0
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line: not a contact
            row_number += 1
            yield parser.parse(row_number, row)
    except UnicodeDecodeError as exc:
        raise ContactsFileError(f"contacts file {path} is not UTF-8 text after row {row_number}: {exc.reason}") from None
    except csv.Error as exc:
        raise ContactsFileError(f"contacts file {path} is not valid CSV near row {row_number + 1}: {exc}") from None
    finally:
        handle.close()
