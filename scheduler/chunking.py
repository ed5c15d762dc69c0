"""Rows to the CSV bytes of one bulk_queue request, and how to split a chunk."""

from __future__ import annotations

import csv
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


# A packed field with none of these is written to CSV as it is (csv.writer would not quote it).
_NEEDS_QUOTING = re.compile('[,"\r\n' + PACKED_RECORD + ']')


def packed_chunk_csv(phone_column: str, extra_names: Sequence[str], rows: Iterable[tuple[str, str | None]],
                     number_format: str = "e164") -> bytes:
    """``chunk_csv`` from contacts as stored (other columns packed, see contacts.pack_extra),
    byte for byte the same, without unpacking and re-quoting the rows that need no quotes
    (most): this ran for every contact of every request."""
    count = len(extra_names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # the same buffer: rows stay in order
    writer.writerow([phone_column, *extra_names])
    empty = "," * count + "\n"
    write, needs_quoting = buffer.write, _NEEDS_QUOTING.search
    for phone, packed in rows:
        number = phone if number_format == "e164" else format_number(phone, number_format)
        if not packed:
            write(number + empty)
        elif count and not needs_quoting(packed):
            write(number + "," + packed.replace(PACKED_UNIT, ",") + "\n")
        else:
            writer.writerow([number, *unpack_extra(packed, count)])
    return buffer.getvalue().encode("utf-8")


def halves(items: Sequence[T]) -> tuple[Sequence[T], Sequence[T]]:
    """Split a rejected chunk in two so only the rows Plum refuses end up rejected."""
    middle = (len(items) + 1) // 2
    return items[:middle], items[middle:]
