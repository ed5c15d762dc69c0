"""What the tick tells admins about their campaign rows: pure functions of a row.

A row the daemon cannot use fails with every problem named (column, value,
accepted forms); status changes and deletions are described in one log line.
"""

from __future__ import annotations

from datetime import datetime

from .config import Settings
from .ingest import row_problems
from .models import Campaign, CampaignDeletion, CampaignStatus
from .reports import fmt_time

# Statuses whose rows the daemon acts on, so they must be usable.
CHECKED = frozenset({CampaignStatus.SCHEDULED.value, CampaignStatus.RUNNING.value, CampaignStatus.PAUSED.value})
EXPLAINED = frozenset({CampaignStatus.PAUSED.value, CampaignStatus.FAILED.value,
                       CampaignStatus.COMPLETED_WITH_ERRORS.value})


def problems(row: Campaign, settings: Settings, now: datetime) -> list[str]:
    """Why this row cannot be run ([] when it can or when the daemon does not act on it)."""
    if row.status not in CHECKED:
        return []
    found = row_problems(row, settings)
    never_started = row.status == CampaignStatus.SCHEDULED.value and row.started_at is None
    if not found and never_started and row.end_at <= now:
        found.append(f"end_at: {fmt_time(row.end_at)} UTC has passed and the campaign never started; "
                     "set a later end_at, then status = 'scheduled'")
    return found


def status_message(row: Campaign) -> str:
    """A status change the daemon did not make itself (an admin's CLI command or SQL edit), or a finish."""
    name = f"campaign {row.id} ({row.name})"
    if row.status_seen is None:
        return f"{name} found: {row.status}, start_at {fmt_time(row.start_at)}, end_at {fmt_time(row.end_at)} UTC"
    error = row.last_error if row.last_error and not row.last_error.startswith("unknown status ") else None
    why = f": {error}" if row.status in EXPLAINED and error else ""
    return f"{name}: {row.status_seen} -> {row.status}{why}"


def deletion_message(gone: CampaignDeletion) -> str:
    name = f"campaign {gone.campaign_id} ({gone.name})"
    if not gone.contacts:
        return f"{name} was deleted while {gone.status}, before any contact was read; nothing was sent"
    return (f"{name} was deleted while {gone.status}: its {gone.chunks_unsent} unsent chunk(s) and "
            f"{gone.contacts} contact row(s) were removed with it and will never be sent; "
            "nothing of it had been sent to Plum")
