"""Contacts files as spreadsheets write them, through real ingestion on SQLite and PostgreSQL: every line is
read exactly once, or the campaign fails with the line or column to fix in last_error."""

import json
import logging
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from scheduler import ingest
from scheduler.config import Settings
from scheduler.contacts import unpack_extra
from tests.support.harness import (
    claim_for_ingestion,
    campaign, e164, rows, running_daemon, settings_for, simulator, valid_numbers, wait_for,
)

NUMBERS = valid_numbers(50, seed=11)
UNCLOSED = "a quoted field opens here and is not closed on its line"
FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


def now() -> datetime:
    return datetime.now(timezone.utc)


def excel(path: Path, lines: list[str]) -> Path:
    """As Excel's "CSV UTF-8" writes: a BOM and CRLF line endings."""
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    return path


def contacts_lines(sep: str = ",") -> list[str]:
    return [sep.join(("phone_number", "name"))] + [sep.join((n, f"Ann {i}")) for i, n in enumerate(NUMBERS)]


def replaced(lines: list[str], line: int, text: str) -> list[str]:
    """``lines`` with physical line ``line`` (1 = the header) replaced."""
    return lines[: line - 1] + [text] + lines[line:]


REFUSED = {
    "unclosed-quote": (replaced(contacts_lines(), 12, f'{NUMBERS[10]},"Ann 10'),
                       f": line 12: {UNCLOSED} (it runs to line 51, the end of the file); every contact must be "
                       "on one line: close or remove the quote"),
    "line-break-in-a-field": (replaced(contacts_lines(), 12, f'{NUMBERS[10]},"Ann\r\nTen"'),
                              f": line 12: {UNCLOSED} (it runs on to line 13, so lines 12-13 would be read as one "
                              "contact); every contact must be on one line: close or remove the quote, or remove "
                              "the line break inside it"),
    "trailing-comma-header": (["phone_number,name,"] + [f"{n},Ann," for n in NUMBERS],
                              ": header column 3 has no name (a trailing comma?); name it or delete the column"),
    "repeated-name": (["phone_number,name,Name"] + [f"{n},Ann,Smith" for n in NUMBERS],
                      ": header columns 2 and 3 are both named 'name' (written 'name', 'Name'; names are compared "
                      "ignoring case and spaces); every column needs its own name"),
    "semicolons-without-a-phone-column": (
        ["name;tel"] + [f"Ann;{n}" for n in NUMBERS],
        " has no phone column: looked for phone_number, destination, phone, number (case-insensitive), found "
        "header 'name', 'tel' (the header looks ';'-separated); name the phone column one of those or add its "
        "name to contacts.phone_columns"),
}


async def ingest_file(repo, path: Path | str) -> tuple[bool, object]:
    row = await claim_for_ingestion(repo, await repo.create_campaign(campaign(Path(path))))
    ok = await ingest.ingest_campaign(repo, row, Settings(), "w", now)
    return ok, await repo.get_campaign(row.id)


async def stored_contacts(repo, campaign_id: int):
    return await rows(repo, "SELECT row_number, raw_phone, phone, extra, status, reason FROM contacts "
                            "WHERE campaign_id = :id ORDER BY row_number", id=campaign_id)


@pytest.mark.parametrize("case", REFUSED)
async def test_a_file_that_cannot_be_read_exactly_fails_its_campaign_naming_the_line_or_column(repo, tmp_path, case):
    lines, message = REFUSED[case]
    path = excel(tmp_path / "c.csv", lines)
    ok, row = await ingest_file(repo, path)
    assert not ok and row.status == "failed"
    assert row.last_error == f"contacts file {path}{message}"
    assert await stored_contacts(repo, row.id) == []


async def test_a_runaway_quote_in_a_large_file_fails_in_the_parser_process_naming_its_line(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "PROCESS_THRESHOLD_BYTES", 0)
    lines = contacts_lines() + [f"{NUMBERS[i % 50]},Ann {i}" for i in range(30_000)]  # past csv's field limit
    path = excel(tmp_path / "big.csv", replaced(lines, 12, f'{NUMBERS[10]},"Ann 10'))
    ok, row = await ingest_file(repo, path)
    assert not ok and row.status == "failed"
    assert row.last_error.startswith(f"contacts file {path}: line 12: {UNCLOSED} (it runs on past line ")
    assert await stored_contacts(repo, row.id) == []


async def test_a_missing_relative_path_names_the_daemons_working_directory(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok, row = await ingest_file(repo, "data/c.csv")
    assert not ok and row.status == "failed"
    assert row.last_error == ("contacts file data/c.csv does not exist (relative paths are read from the daemon's "
                              f"working directory {tmp_path}; write an absolute path)")


EXTENSIONS = ["{} x12", "{} ext. 12", "{} #12", "{};ext=12"]


async def test_numbers_with_an_extension_are_invalid_with_the_reason(repo, tmp_path):
    lines = contacts_lines()
    for i, shape in enumerate(EXTENSIONS, start=2):
        lines[i - 1] = f'"{shape.format(NUMBERS[i - 2])}",Ext {i}'
    ok, row = await ingest_file(repo, excel(tmp_path / "c.csv", lines))
    assert ok and (row.contacts_total, row.contacts_valid, row.contacts_invalid) == (50, 46, 4)
    invalid = [(r.row_number, r.raw_phone, r.phone, r.reason) for r in await stored_contacts(repo, row.id)
               if r.status == "invalid"]
    reason = "has an extension (x12): Plum dials the main number only; put the extension in another column or remove it"
    assert invalid == [(n + 1, shape.format(NUMBERS[n]), None, reason) for n, shape in enumerate(EXTENSIONS)]


@pytest.mark.parametrize("sep", [";", "\t"], ids=["semicolon", "tab"])
async def test_semicolon_and_tab_separated_files_are_ingested_whole(repo, tmp_path, sep):
    lines = [f"name{sep}phone_number{sep}note"] + [f'Smith, Ann {i}{sep}{n}{sep}"a{sep}b"' for i, n in enumerate(NUMBERS)]
    ok, row = await ingest_file(repo, excel(tmp_path / "c.csv", lines))
    assert ok and (row.contacts_total, row.contacts_valid, row.contacts_invalid) == (50, 50, 0)
    assert json.loads(row.contacts_header) == {"phone": "phone_number", "extra": ["name", "note"]}
    stored = await stored_contacts(repo, row.id)
    assert [(r.phone, unpack_extra(r.extra, 2)) for r in stored] == [
        (e164(n), [f"Smith, Ann {i}", f"a{sep}b"]) for i, n in enumerate(NUMBERS)]


async def test_the_summary_accounts_for_every_line_of_the_file(repo, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="scheduler.ingest")
    lines = contacts_lines()
    lines = lines[:5] + ["", ""] + lines[5:30] + [" "] + lines[30:] + ["", ",", ""]  # ',' is a row (no number)
    path = excel(tmp_path / "c.csv", lines)
    ok, row = await ingest_file(repo, path)
    assert ok
    (record,) = [r for r in caplog.records if "ingested" in r.getMessage()]
    counts = record.args[1]
    assert (counts["total"], counts["valid"], counts["invalid"], counts["blank_lines"]) == (51, 50, 1, 5)
    assert counts["total"] + counts["blank_lines"] + 1 == len(path.read_bytes().splitlines())
    assert row.contacts_total == 51


async def test_plum_gets_a_comma_separated_file_from_a_semicolon_one_without_the_extension(repo, db_url, tmp_path):
    lines = ["phone_number;name"] + [f"{n};Smith, Ann {i}" for i, n in enumerate(NUMBERS)]
    lines = replaced(lines, 3, f"{NUMBERS[1]} x12;Bo") + ["", "  "]
    contacts = excel(tmp_path / "c.csv", lines)
    async with simulator() as sim:
        row = await repo.create_campaign(campaign(contacts))
        async with running_daemon(settings_for(db_url, sim.base_url)):
            done = await wait_for(repo, row.id, FINAL)
    assert done.status == "completed", done.last_error
    assert (done.contacts_total, done.contacts_valid, done.contacts_invalid) == (50, 49, 1)
    assert sim.queued_numbers == Counter({e164(n): 1 for n in NUMBERS if n != NUMBERS[1]})
    sent = [r.csv_text for r in sim.requests if r.status == 200]
    assert {text.splitlines()[0] for text in sent} == {"phone_number,name"}
    names = Counter(line.split(",", 1)[1] for text in sent for line in text.splitlines()[1:])
    assert names == Counter(f'"Smith, Ann {i}"' for i in range(50) if i != 1)
