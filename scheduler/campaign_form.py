"""What `campaign create` and the console's "New campaign" form share: the fields as typed,
their checks and messages (named by the CLI's flags), and storing the contacts file.

One copy of each rule: the CLI builds a ``CampaignRequest`` from its arguments, the console
from its form, and both get the same ``NewCampaign`` or the same ``UserError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from . import stored_files, windows
from .config import Settings
from .errors import UserError
from .models import Campaign, CampaignStatus
from .repository import NewCampaign, Repository
from .rules import WaitBounds, campaign_problems, parse_when


@dataclass
class CampaignRequest:
    """The fields of `campaign create`, as typed (times as text)."""

    name: str
    survey_id: str
    instance_id: str
    contacts: str  # path of the CSV file
    start: str
    end: str
    max_attempts: int = 1
    reattempt_wait: int | None = None
    result_url: str | None = None
    chunk_size: int | None = None
    calling_window: str | None = None
    excluded_weekdays: str | None = None
    draft: bool = False


class HasWhen(Protocol):
    start: str
    end: str


# campaign_problems() names columns (an admin reads them in last_error); here the user typed flags.
_FLAG_OF_COLUMN = {
    "survey_id": "--survey-id",
    "instance_id": "--instance-id",
    "start_at": "--start",
    "end_at": "--end",
    "max_attempts": "--max-attempts",
    "reattempt_wait": "--reattempt-wait",
    "chunk_size": "--chunk-size",
    "calling_window_start": "--calling-window",
    "calling_window_end": "--calling-window",
    "excluded_weekdays": "--excluded-weekdays",
}
# Not after a dot: submission.chunk_size is a config key, not the column.
_COLUMN_NAME = re.compile(r"(?<![.\w])(" + "|".join(_FLAG_OF_COLUMN) + r")\b")
# A column left empty takes the configured value; a flag is left out instead.
_FLAG_WORDING = {"(or empty for the configured size)": "(or leave it out for the configured submission.chunk_size)"}


def flag_problem(problem: str) -> str:
    """A campaign_problems() line with every column name replaced by the flag that sets it."""
    for column_words, flag_words in _FLAG_WORDING.items():
        problem = problem.replace(column_words, flag_words)
    return _COLUMN_NAME.sub(lambda match: _FLAG_OF_COLUMN[match.group(1)], problem)


def when_problems(args: HasWhen, now: datetime) -> tuple[datetime | None, datetime | None, list[str]]:
    """--start and --end as instants; an end not after now would expire every chunk at once."""
    parsed: dict[str, datetime | None] = {}
    problems = []
    for flag, text in (("--start", args.start), ("--end", args.end)):
        try:
            parsed[flag] = parse_when(text)
        except ValueError as exc:
            parsed[flag] = None
            problems.append(f"{flag}: {exc}")
    end = parsed["--end"]
    if end is not None and end <= now:
        shown = end.isoformat() if args.end.strip() == end.isoformat() else f"{args.end.strip()} ({end.isoformat()})"
        problems.append(f"--end: {shown} is in the past; a campaign must end in the future")
    return parsed["--start"], end, problems


def new_campaign(request: CampaignRequest, settings: Settings, now: datetime,
                 problems: list[str] | None = None, check_file: bool = True) -> NewCampaign:
    """The row to insert, or one UserError listing every problem (``problems``: found before,
    e.g. a form field that is not a number; ``check_file=False``: the caller checked the file,
    an upload)."""
    start, end, found = when_problems(request, now)
    found = list(problems or []) + found
    contacts = Path(request.contacts).expanduser()
    if check_file and not contacts.is_file():
        found.append(f"--contacts: {contacts} does not exist or is not a file; give the path of the CSV file")
    bounds = WaitBounds(settings.insight.reattempt_wait_min_seconds, settings.insight.reattempt_wait_max_seconds)
    found += [
        flag_problem(p)
        for p in campaign_problems(
            survey_id=request.survey_id, instance_id=request.instance_id, start_at=start, end_at=end,
            max_attempts=request.max_attempts, reattempt_wait=request.reattempt_wait,
            chunk_size=request.chunk_size, bounds=bounds,
        )
        if p not in ("start_at: must be set", "end_at: must be set")  # unreadable: reported above
    ]
    window_start, window_end, window_problem = window_columns(request)
    found += window_problem
    if found:
        raise UserError("cannot create campaign:\n" + "\n".join(f"  {p}" for p in found))
    assert start is not None and end is not None
    return NewCampaign(
        name=request.name, survey_id=request.survey_id, instance_id=request.instance_id,
        contacts_path=str(contacts.resolve()), start_at=start, end_at=end, max_attempts=request.max_attempts,
        reattempt_wait=request.reattempt_wait, result_url=request.result_url, chunk_size=request.chunk_size,
        calling_window_start=window_start, calling_window_end=window_end,
        excluded_weekdays=request.excluded_weekdays,
        status=(CampaignStatus.DRAFT if request.draft else CampaignStatus.SCHEDULED).value,
    )


def window_columns(request: CampaignRequest) -> tuple[str | None, str | None, list[str]]:
    """--calling-window 08:00-21:00 -> the two columns; --excluded-weekdays is checked too."""
    start = end = None
    problems = []
    if request.calling_window:
        try:
            window = windows.parse_window(request.calling_window)
            start, end = windows.format_clock(window.start_minute), windows.format_clock(window.end_minute)
        except ValueError as exc:
            problems.append(f"--calling-window: {exc}")
    try:
        windows.parse_weekdays(request.excluded_weekdays)
    except ValueError as exc:
        problems.append(f"--excluded-weekdays: {exc}")
    return start, end, problems


async def store_campaign(repo: Repository, new: NewCampaign, contacts: Path,
                         file_name: str | None = None) -> tuple[Campaign, str]:
    """Insert the row with its contacts file's bytes (``file_name``: as uploaded, else the
    file's own); returns it and what to tell the user."""
    try:
        packed = await asyncio.to_thread(stored_files.pack, contacts)
    except OSError as exc:
        raise UserError(f"--contacts: cannot read {new.contacts_path}: {exc.strerror or exc}") from None
    if file_name is not None:
        packed = dataclasses.replace(packed, file_name=file_name)
    row = await repo.create_campaign(new, packed)
    return row, (f"campaign {row.id} created ({row.status}): {row.name}; contacts file stored in the database "
                 f"({packed.size_bytes:,} bytes, {len(packed.data):,} compressed): any daemon can read it")
