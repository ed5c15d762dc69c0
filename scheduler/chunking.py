"""Rows to the CSV bytes of one bulk_queue request, and how to split a chunk."""

from __future__ import annotations

import csv
import functools
import io
import re
from typing import Iterable, Sequence, TypeVar

from .contacts import PACKED_RECORD, PACKED_UNIT, unpack_extra

T = TypeVar("T")


def format_number(e164: str, number_format: str) -> str:
    """How the number is written in the CSV sent to Plum (config insight.number_format)."""
    if number_format == "e164":
        return e164
    if number_format == "tel":
        return f"tel:{e164}"
    if number_format == "digits":
        return e164.lstrip("+")
    raise ValueError(f"unknown number format {number_format!r}")


def chunk_csv(
    phone_column: str,
    extra_names: Sequence[str],
    rows: Iterable[tuple[str, Sequence[str]]],
    number_format: str = "e164",
) -> bytes:
    """Header = the phone column first, then the contact's other columns in file order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([phone_column, *extra_names])
    for phone, extra in rows:
        writer.writerow([format_number(phone, number_format), *extra])
    return buffer.getvalue().encode("utf-8")




def packed_chunk_csv(phone_column: str, extra_names: Sequence[str], rows: Iterable[tuple[str, str | None]],
                     number_format: str = "e164") -> bytes:
    """``chunk_csv`` from contacts as stored (other columns packed, see contacts.pack_extra),
    byte for byte the same. It runs for every contact ingested (chunking.BodyBuilder), so the
    common chunk, where no value holds a comma, a quote or a line break, is joined as text
    (csv would quote nothing in it) at ~6x csv's speed; any other goes through csv, a packed
    row split back into its fields in one step (a JSON record, for values holding the
    separators, decoded)."""
    rows = rows if isinstance(rows, list) else list(rows)
    if number_format != "e164":
        rows = [(format_number(phone, number_format), packed) for phone, packed in rows]
    count = len(extra_names)
    header = _header_line(phone_column, tuple(extra_names))
    if not rows:
        return header.encode("utf-8")
    if count:
        if _CSV_SPECIAL.search(rows[0][1] or "") is None:  # (a file whose rows need quoting skips the join)
            empty = PACKED_UNIT * (count - 1)
            text = "\n".join([number + PACKED_UNIT + (packed or empty) for number, packed in rows])
            if _CSV_SPECIAL.search(text) is None:
                return (header + text.replace(PACKED_UNIT, ",") + "\n").encode("utf-8")
    elif all(number for number, _ in rows):  # (csv quotes a row's only field when it is empty)
        text = "\n".join([number for number, _ in rows])
        if _CSV_SPECIAL.search(text) is None:
            return (header + text + "\n").encode("utf-8")
    buffer = io.StringIO()
    buffer.write(header)
    writer = csv.writer(buffer, lineterminator="\n")
    if count:
        unit, empty = PACKED_UNIT, PACKED_UNIT * (count - 1)
        writer.writerows([number, *unpack_extra(packed, count)] if packed and packed[0] == PACKED_RECORD
                         else (number + unit + (packed or empty)).split(unit) for number, packed in rows)
    else:
        writer.writerows([number] for number, _ in rows)
    return buffer.getvalue().encode("utf-8")


# What makes csv quote a value (QUOTE_MINIMAL: the delimiter, the quote, a line break), and a
# packed record (values holding the packing separators, stored as JSON).
_CSV_SPECIAL = re.compile('[,"\r\n' + re.escape(PACKED_RECORD) + "]")


@functools.lru_cache(maxsize=64)
def _header_line(phone_column: str, extra_names: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([phone_column, *extra_names])
    return buffer.getvalue()


def halves(items: Sequence[T]) -> tuple[Sequence[T], Sequence[T]]:
    """Split a rejected chunk in two so only the rows Plum refuses end up rejected."""
    middle = (len(items) + 1) // 2
    return items[:middle], items[middle:]


def body_format(phone_column: str, number_format: str) -> str:
    """What a stored request body depends on besides its contacts (config insight.phone_column and
    insight.number_format): a body built under another is not used (see ledger.chunk_payload)."""
    return f"{number_format}:{phone_column}"


class BodyBuilder:
    """Each chunk's request CSV, built once at ingestion from the rows as stored (the same bytes
    ``packed_chunk_csv`` makes at send time), so sending reads one value instead of a thousand
    rows and writes no CSV (issue 15). A chunk's body is ready when it holds ``chunk_size``
    contacts, or at the end of the file."""

    def __init__(self, phone_column: str, extra_names: Sequence[str], number_format: str, chunk_size: int) -> None:
        self.phone_column, self.extra_names, self.number_format = phone_column, list(extra_names), number_format
        self.chunk_size = chunk_size
        self._open: dict[int, list[tuple[str, str | None]]] = {}

    def add(self, contacts: Iterable[tuple[int, str, str | None]]) -> list[tuple[int, int, bytes]]:
        """Contacts ``(chunk seq, phone, packed other columns)`` in file order; (seq, contacts,
        body) of each chunk they fill. One loop for all: with calling windows the chunks of
        several time zones fill side by side, so neighbouring contacts rarely share one."""
        filled = []
        open_chunks, size = self._open, self.chunk_size
        for seq, phone, packed in contacts:
            rows = open_chunks.get(seq)
            if rows is None:
                rows = open_chunks[seq] = []
            rows.append((phone, packed))
            if len(rows) >= size:
                filled.append(self._body(seq))
        return filled

    def rest(self) -> list[tuple[int, int, bytes]]:
        """The bodies of the chunks the file ended in (not full)."""
        return [self._body(seq) for seq in sorted(self._open)]

    def _body(self, seq: int) -> tuple[int, int, bytes]:
        rows = self._open.pop(seq)
        return seq, len(rows), packed_chunk_csv(self.phone_column, self.extra_names, rows, self.number_format)
