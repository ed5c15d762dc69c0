"""`campaign export`: one CSV row per input contact with what came of it.

Contact data is untrusted. A spreadsheet evaluates a cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a formula (OWASP "CSV
injection"), so such cells of the free-text columns are prefixed with ``'``.
The normalised number is ours (always ``+digits``) and is left as it is.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from pathlib import Path
from typing import Any, AsyncIterator, TextIO

from .contacts import unpack_extra
from .repository import Repository

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = ["row_number", "original_number", "normalised_number", "contact_status", "reason", "chunk_seq",
           "last_submission_outcome", "last_submission_status_code", "call_status", "call_duration_seconds"]


def neutralise(cell: Any) -> str:
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


async def write_export(repo: Repository, campaign_id: int, path: Path) -> int:
    """Write beside ``path`` and rename over it: a failed export leaves no half-written file."""
    campaign = await repo.get_campaign(campaign_id)
    extra_names = extra_columns(campaign.contacts_header)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through a file or link that is already there; mode 0o666 keeps the umask's say.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "w", newline="", encoding="utf-8") as handle:
            count = await _write_rows(handle, repo, campaign_id, extra_names)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return count


async def _write_rows(handle: TextIO, repo: Repository, campaign_id: int, extra_names: list[str]) -> int:
    writer = csv.writer(handle)
    count = -1  # the header is not a contact
    async for line in export_lines(repo, campaign_id, extra_names):
        writer.writerow(line)
        count += 1
    return count


async def export_lines(repo: Repository, campaign_id: int, extra_names: list[str]) -> AsyncIterator[list[str]]:
    """The header, then one line per contact (the file `campaign export` writes and the console sends)."""
    yield COLUMNS + [neutralise(name) for name in extra_names]
    async for row in repo.export_rows(campaign_id):
        yield export_line(row, len(extra_names))


def extra_columns(contacts_header: str | None) -> list[str]:
    """The contact's own columns, from what ingestion stored (none before ingestion)."""
    names: list[str] = json.loads(contacts_header or '{"extra": []}')["extra"]
    return names


def export_line(row: Any, extra_count: int) -> list[str]:
    return [
        str(row.row_number), neutralise(row.raw_phone), row.phone or "", row.status, neutralise(row.reason),
        "" if row.seq is None else str(row.seq), row.outcome or "", "" if row.status_code is None else str(row.status_code),
        row.call_status or "", "" if row.duration_seconds is None else str(row.duration_seconds),
        *(neutralise(value) for value in unpack_extra(row.extra, extra_count)),
    ]
