"""Calling windows: when a contact may be called, as UTC intervals.

A rule is a daily local window (``08:00-21:00``), weekdays on which nobody is
called, and the offset that keeps batches off the top of the hour. Everything
here is a pure function of its arguments: ingestion, the daemon's tick, the
CLI and the property test all call the same code.

Daylight saving: a local time that does not exist (spring forward) or exists
twice (fall back) is read the conservative way, the later instant for a
window's start and the earlier one for its end, so a window never includes a
moment outside the local hours, at the price of a shorter window on two nights
a year.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterable, Iterator, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MINUTES_PER_DAY = 24 * 60
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {name: day for day, full in enumerate(_FULL_NAMES) for name in (full, full[:3])}
# A window shorter than this is not worth a request: Plum could hardly start the calls.
MIN_WINDOW = timedelta(seconds=60)
# No window within this many days of a moment means none at all (the rule and zones repeat yearly).
SEARCH_DAYS = 400

Interval = tuple[datetime, datetime]
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::00)?")  # SQL's TIME text '08:00:00' too


@dataclass(frozen=True)
class DailyWindow:
    """Minutes after local midnight; the end may be 24:00 (1440)."""

    start_minute: int
    end_minute: int

    def __str__(self) -> str:
        return f"{format_clock(self.start_minute)}-{format_clock(self.end_minute)}"


@dataclass(frozen=True)
class CallingRule:
    window: DailyWindow
    excluded_weekdays: frozenset[int] = field(default_factory=frozenset)  # 0 = Monday
    top_of_hour_offset: timedelta = timedelta(minutes=5)

    def describe(self) -> str:
        days = ",".join(WEEKDAYS[d] for d in sorted(self.excluded_weekdays))
        return f"{self.window} local" + (f", not on {days}" if days else "")


# -- parsing what admins write ------------------------------------------------------


def parse_clock(text: str, allow_midnight_end: bool = False) -> int:
    """'08:00' -> 480. '24:00' only as the end of a window."""
    match = _CLOCK.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a time of day like 08:00")
    hours, minutes = int(match.group(1)), int(match.group(2))
    total = hours * 60 + minutes
    if minutes >= 60 or total > MINUTES_PER_DAY or (total == MINUTES_PER_DAY and not allow_midnight_end):
        raise ValueError(f"{text!r} is not a time of day between 00:00 and {'24:00' if allow_midnight_end else '23:59'}")
    return total


def format_clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def make_window(start: str, end: str) -> DailyWindow:
    window = DailyWindow(parse_clock(start), parse_clock(end, allow_midnight_end=True))
    if window.end_minute <= window.start_minute:
        raise ValueError(f"the window must end after it starts within one day (got {start}-{end})")
    return window


def parse_window(text: str) -> DailyWindow:
    """'08:00-21:00' -> DailyWindow(480, 1260)."""
    start, dash, end = text.partition("-")
    if not dash:
        raise ValueError(f"{text!r} is not a window like 08:00-21:00")
    return make_window(start, end)


def parse_weekdays(text: str | None) -> frozenset[int]:
    """'sat,sun' or 'Saturday Sunday' -> {5, 6}; empty -> none."""
    days: set[int] = set()
    for word in re.split(r"[\s,;\[\]\"']+", (text or "").strip().lower()):
        if not word:
            continue
        if word not in _DAY_NAMES:
            raise ValueError(f"{word!r} is not a weekday (use mon, tue, wed, thu, fri, sat, sun)")
        days.add(_DAY_NAMES[word])
    if len(days) == len(WEEKDAYS):
        raise ValueError("every weekday is excluded: nobody could ever be called")
    return frozenset(days)


def check_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. America/New_York)") from None


def campaign_rule(
    window_start: str | None, window_end: str | None, excluded_weekdays: str | None,
    configured_window: str | None, top_of_hour_offset_minutes: float,
) -> CallingRule | None:
    """The rule for one campaign: its own columns, else config; None when no window applies.

    Raises ValueError naming the column an admin must fix.
    """
    if bool(window_start) != bool(window_end):
        raise ValueError("calling_window_start and calling_window_end: set both or neither")
    try:
        excluded = parse_weekdays(excluded_weekdays)
    except ValueError as exc:
        raise ValueError(f"excluded_weekdays: {exc}") from None
    if window_start and window_end:
        try:
            window = make_window(window_start, window_end)
        except ValueError as exc:
            raise ValueError(f"calling_window_start/calling_window_end: {exc}") from None
    elif configured_window:
        window = parse_window(configured_window)
    elif excluded:
        window = DailyWindow(0, MINUTES_PER_DAY)
    else:
        return None
    return CallingRule(window, excluded, timedelta(minutes=top_of_hour_offset_minutes))


# -- local windows to UTC intervals --------------------------------------------------


def _instant(day: date, minute: int, zone: ZoneInfo, latest: bool) -> datetime:
    day += timedelta(days=minute // MINUTES_PER_DAY)
    minute %= MINUTES_PER_DAY
    wall = datetime.combine(day, time(minute // 60, minute % 60))
    first = wall.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(timezone.utc)
    return max(first, second) if latest else min(first, second)


def zone_windows(zone: ZoneInfo, rule: CallingRule, since: datetime, until: datetime) -> Iterator[Interval]:
    """The rule's windows in one zone overlapping [since, until), in order, touching ones merged."""
    day = since.astimezone(zone).date() - timedelta(days=1)
    last_day = until.astimezone(zone).date() + timedelta(days=1)
    pending: Interval | None = None
    while day <= last_day:
        if day.weekday() not in rule.excluded_weekdays:
            start = _instant(day, rule.window.start_minute, zone, latest=True)
            end = _instant(day, rule.window.end_minute, zone, latest=False)
            if start < end and end > since:
                if pending is not None and start <= pending[1]:
                    pending = (pending[0], max(end, pending[1]))
                else:
                    if pending is not None:
                        yield pending
                    pending = (start, end)
        day += timedelta(days=1)
    if pending is not None:
        yield pending


def intersect(streams: Sequence[Iterable[Interval]]) -> Iterator[Interval]:
    """Where every stream's sorted, disjoint intervals overlap (the most restrictive window)."""
    iterators = [iter(stream) for stream in streams]
    current = [next(it, None) for it in iterators]
    while current and all(interval is not None for interval in current):
        start = max(interval[0] for interval in current)  # type: ignore[index]
        end = min(interval[1] for interval in current)  # type: ignore[index]
        if start < end:
            yield start, end
        first_to_end = min(range(len(current)), key=lambda i: current[i][1])  # type: ignore[index]
        current[first_to_end] = next(iterators[first_to_end], None)


def _off_the_hour(instant: datetime, zones: Sequence[ZoneInfo], rule: CallingRule) -> datetime:
    """A start exactly on the hour (in UTC or any of the zones) moves by the rule's offset."""
    if instant.second or instant.microsecond:
        return instant
    if instant.minute == 0 or any(instant.astimezone(zone).minute == 0 for zone in zones):
        return instant + rule.top_of_hour_offset
    return instant


def next_window(
    zone_names: Sequence[str], rule: CallingRule, not_before: datetime, start_at: datetime, end_at: datetime,
) -> Interval | None:
    """The first window, at or after ``not_before``, open in every zone, inside the campaign.

    A start exactly on the hour moves by the rule's offset (Plum's advice); a
    window shorter than MIN_WINDOW is skipped. None: no window before end_at.
    """
    low = max(not_before, start_at)
    high = min(end_at, low + timedelta(days=SEARCH_DAYS))
    if not zone_names or low >= high:
        return None
    zones = [ZoneInfo(name) for name in zone_names]
    for start, end in intersect([zone_windows(zone, rule, low, high) for zone in zones]):
        # off the hour before clipping too, or a window planned from 08:01 would start then
        start = _off_the_hour(max(_off_the_hour(start, zones, rule), low), zones, rule)
        end = min(end, high)
        if end - start >= MIN_WINDOW:
            return start, end
        if start >= high:
            return None
    return None


def describe_local(zone_name: str, window: Interval) -> str:
    """'Tue 2026-12-01 08:05-21:00 EST' (the end's date is added when it differs)."""
    zone = ZoneInfo(zone_name)
    start, end = (moment.astimezone(zone) for moment in window)
    end_text = end.strftime("%H:%M") if end.date() == start.date() else end.strftime("%a %Y-%m-%d %H:%M")
    return f"{start.strftime('%a %Y-%m-%d %H:%M')}-{end_text} {end.tzname()}"


KEEP = "keep"


def window_change(current: Interval, planned: Interval | None, now: datetime) -> Interval | None | str:
    """What to do with an unsent chunk's window given the one chosen now: KEEP it, move it
    to ``planned``, or None (no window left). An open window counts as the same when
    only its start differs and both have started (it is sent from now either way)."""
    if planned is None:
        return None
    if planned[1] == current[1] and max(planned[0], now) == max(current[0], now):
        return KEEP
    return planned
