"""Pure checks of a campaign's fields, shared by the CLI and the daemon.

Each problem names the column and the rule, because an admin reads it in
``last_error`` and fixes that column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard
from datetime import datetime, timezone

from . import windows
from .models import ADMIN_STATUSES, CampaignStatus

MAX_ATTEMPTS_RANGE = (1, 10)
TIME_FORMS = (
    "write UTC as 'YYYY-MM-DD HH:MM:SS', or ISO 8601 with an offset ('2026-12-01T09:00:00-05:00', '...Z'), "
    "or Unix seconds (1796137200)"
)
KNOWN_STATUSES = frozenset(s.value for s in CampaignStatus)


@dataclass(frozen=True)
class WaitBounds:
    min_seconds: int = 60
    max_seconds: int = 86400


def campaign_problems(
    *,
    survey_id: str | None,
    instance_id: str | None,
    start_at: datetime | None,
    end_at: datetime | None,
    max_attempts: object,
    reattempt_wait: object,
    chunk_size: object = None,
    bounds: WaitBounds = WaitBounds(),
    calling_window_start: str | None = None,
    calling_window_end: str | None = None,
    excluded_weekdays: str | None = None,
) -> list[str]:
    problems: list[str] = []
    if not (survey_id or "").strip():
        problems.append("survey_id: must not be empty")
    if not (instance_id or "").strip():
        problems.append("instance_id: must not be empty")
    start_at, end_at = _instant("start_at", start_at, problems), _instant("end_at", end_at, problems)
    if start_at is not None and end_at is not None and end_at <= start_at:
        problems.append("end_at: must be after start_at")
    problems.extend(attempt_problems(max_attempts, reattempt_wait, bounds))
    if chunk_size is not None and (not _is_int(chunk_size) or int(chunk_size) < 1):
        problems.append("chunk_size: must be an integer >= 1 (or empty for the configured size)")
    problems.extend(window_problems(calling_window_start, calling_window_end, excluded_weekdays))
    return problems


def _instant(column: str, value: object, problems: list[str]) -> datetime | None:
    """The value when it is an instant; otherwise None, with the problem named (SQLite keeps what
    an admin wrote when it denotes no time: models.UnreadableTime)."""
    if value is None:
        problems.append(f"{column}: must be set")
        return None
    if isinstance(value, datetime):
        return value
    problems.append(f"{column}: {str(value)!r} is not a time; {TIME_FORMS}")
    return None


def status_problem(status: str) -> str | None:
    """A status the daemon does not know is named, never guessed ('Scheduled', ' scheduled')."""
    if status in KNOWN_STATUSES:
        return None
    return f"unknown status {status!r}: use one of {', '.join(ADMIN_STATUSES)}"


def window_problems(start: str | None, end: str | None, excluded_weekdays: str | None) -> list[str]:
    """The calling-window columns, checked without the configured window (that one is valid)."""
    try:
        windows.campaign_rule(start, end, excluded_weekdays, None, 0)
    except ValueError as exc:
        return [str(exc)]
    return []


def attempt_problems(max_attempts: object, reattempt_wait: object, bounds: WaitBounds = WaitBounds()) -> list[str]:
    low, high = MAX_ATTEMPTS_RANGE
    if not _is_int(max_attempts) or not low <= int(max_attempts) <= high:
        return [f"max_attempts: must be an integer between {low} and {high} (got {max_attempts!r})"]
    if int(max_attempts) == 1:
        return []
    if reattempt_wait is None:
        return ["reattempt_wait: required when max_attempts > 1"]
    if not _is_int(reattempt_wait) or not bounds.min_seconds <= int(reattempt_wait) <= bounds.max_seconds:
        return [
            f"reattempt_wait: must be an integer between {bounds.min_seconds} and {bounds.max_seconds} "
            f"seconds when max_attempts > 1 (got {reattempt_wait!r})"
        ]
    return []


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_when(text: str) -> datetime:
    """ISO 8601 with an offset, or a Unix timestamp in seconds, to aware UTC."""
    stripped = text.strip()
    try:
        return datetime.fromtimestamp(float(stripped), tz=timezone.utc)
    except ValueError:
        pass
    except (OverflowError, OSError):
        raise ValueError(f"{text!r} is out of range for a Unix timestamp") from None
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither ISO 8601 (e.g. 2026-12-01T14:00:00+00:00) nor a Unix timestamp"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add one, e.g. {stripped}+00:00 or {stripped}Z")
    return parsed.astimezone(timezone.utc)
