"""Calling windows: parsing, fixed-clock windows per zone, daylight saving, and a
property test that no chunk's window ever leaves any of its contacts' local hours."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import windows
from scheduler.contacts import ParsedContact
from scheduler.ingest import ChunkAssigner, WindowPlan
from scheduler.phones import ZoneLookup
from scheduler.windows import CallingRule, DailyWindow, campaign_rule, next_window

UTC = timezone.utc
US_RULE = CallingRule(DailyWindow(8 * 60, 21 * 60))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- what admins write -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("08:00-21:00", (480, 1260)), ("8:30-17:45", (510, 1065)), ("00:00-24:00", (0, 1440)),
     (" 09:00 - 17:00 ", (540, 1020)), ("08:00:00-21:00:00", (480, 1260))],
)
def test_parse_window(text, expected):
    window = windows.parse_window(text)
    assert (window.start_minute, window.end_minute) == expected


@pytest.mark.parametrize(
    "text, message",
    [("8-21", "not a time of day"), ("21:00-08:00", "must end after it starts"), ("08:00", "not a window"),
     ("24:00-24:00", "between 00:00 and 23:59"), ("08:60-09:00", "not a time of day between"),
     ("09:00-09:00", "must end after"), ("08:00:30-21:00", "not a time of day")],
)
def test_parse_window_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        windows.parse_window(text)


@pytest.mark.parametrize(
    "text, days",
    [(None, set()), ("", set()), ("sat,sun", {5, 6}), ("Saturday, Sunday", {5, 6}), ("mon tue;wed", {0, 1, 2}),
     ('["sat", "sun"]', {5, 6}), ("SUN", {6})],
)
def test_parse_weekdays(text, days):
    assert windows.parse_weekdays(text) == days


# numbers are refused: 5,6 means Sat,Sun to Python, Fri,Sat to ISO 8601, and cron counts from Sunday = 0
@pytest.mark.parametrize("text", ["sa", "weekend", "1", "5,6", "mon,tue,wed,thu,fri,sat,sun"])
def test_parse_weekdays_refuses(text):
    with pytest.raises(ValueError):
        windows.parse_weekdays(text)


@pytest.mark.parametrize(
    "start, end, excluded, configured, expected",
    [
        (None, None, None, None, None),  # off unless configured
        (None, None, None, "08:00-21:00", "08:00-21:00 local"),
        ("09:00", "17:00", None, "08:00-21:00", "09:00-17:00 local"),  # the campaign's columns win
        (None, None, "sun", "08:00-21:00", "08:00-21:00 local, not on sun"),
        (None, None, "sat,sun", None, "00:00-24:00 local, not on sat,sun"),
    ],
)
def test_campaign_rule(start, end, excluded, configured, expected):
    rule = campaign_rule(start, end, excluded, configured, 5)
    assert (rule.describe() if rule else None) == expected


@pytest.mark.parametrize(
    "start, end, excluded, message",
    [("09:00", None, None, "set both or neither"), ("9", "17:00", None, "calling_window_start/calling_window_end"),
     (None, None, "someday", "excluded_weekdays")],
)
def test_campaign_rule_names_the_column(start, end, excluded, message):
    with pytest.raises(ValueError, match=message):
        campaign_rule(start, end, excluded, None, 5)


# -- fixed clocks --------------------------------------------------------------------

CAMPAIGN_START = at("2026-12-01 06:00")  # a Tuesday; 01:00 in New York, 20:00 the day before in Honolulu


@pytest.mark.parametrize(
    "zone, start, end",
    [
        ("America/New_York", "2026-12-01 13:05", "2026-12-02 02:00"),  # 08:05-21:00 EST
        ("America/Chicago", "2026-12-01 14:05", "2026-12-02 03:00"),  # 08:05-21:00 CST
        ("America/Denver", "2026-12-01 15:05", "2026-12-02 04:00"),  # 08:05-21:00 MST
        ("America/Phoenix", "2026-12-01 15:05", "2026-12-02 04:00"),  # no DST, MST all year
        ("America/Los_Angeles", "2026-12-01 16:05", "2026-12-02 05:00"),  # 08:05-21:00 PST
        ("Pacific/Honolulu", "2026-12-01 06:05", "2026-12-01 07:00"),  # still 20:00-21:00 HST: the rest of today
    ],
)
def test_us_zones_at_campaign_start_0600_utc(zone, start, end):
    window = next_window([zone], US_RULE, CAMPAIGN_START, CAMPAIGN_START, CAMPAIGN_START + timedelta(days=3))
    assert window == (at(start), at(end))


def test_the_window_is_clipped_to_the_campaign():
    start, end = at("2026-12-01 15:30"), at("2026-12-01 18:00")
    assert next_window(["America/New_York"], US_RULE, start, start, end) == (start, end)


def test_a_window_at_the_top_of_the_hour_moves_by_the_offset():
    rule = CallingRule(DailyWindow(9 * 60, 17 * 60), top_of_hour_offset=timedelta(minutes=15))
    window = next_window(["America/Chicago"], rule, CAMPAIGN_START, CAMPAIGN_START, CAMPAIGN_START + timedelta(days=1))
    assert window == (at("2026-12-01 15:15"), at("2026-12-01 23:00"))
    # a campaign starting on the hour inside the window moves too
    start = at("2026-12-01 17:00")
    assert next_window(["America/Chicago"], rule, start, start, start + timedelta(hours=3))[0] == at("2026-12-01 17:15")


def test_a_window_planned_inside_its_first_minutes_still_opens_off_the_hour():
    moment = at("2026-12-01 13:01")  # 08:01 in New York
    window = next_window(["America/New_York"], US_RULE, moment, CAMPAIGN_START, CAMPAIGN_START + timedelta(days=2))
    assert window == (at("2026-12-01 13:05"), at("2026-12-02 02:00"))
    later = at("2026-12-01 13:07")
    assert next_window(["America/New_York"], US_RULE, later, later, later + timedelta(days=1))[0] == later


W = (at("2026-12-01 13:05"), at("2026-12-02 02:00"))


@pytest.mark.parametrize(
    "planned, now, expected",
    [
        (W, at("2026-12-01 12:00"), windows.KEEP),  # the same window
        ((at("2026-12-01 14:00"), W[1]), at("2026-12-01 14:00"), windows.KEEP),  # open: sent from now either way
        ((at("2026-12-01 15:05"), at("2026-12-01 22:00")), at("2026-12-01 12:00"),
         (at("2026-12-01 15:05"), at("2026-12-01 22:00"))),  # an admin narrowed the hours
        ((at("2026-12-02 13:05"), at("2026-12-03 02:00")), at("2026-12-02 02:10"),
         (at("2026-12-02 13:05"), at("2026-12-03 02:00"))),  # closed unsent: the next day's
        (None, at("2026-12-02 02:10"), None),  # none left before end_at
    ],
)
def test_window_change(planned, now, expected):
    assert windows.window_change(W, planned, now) == expected


def test_several_zones_get_the_intersection():
    # 208 (Idaho) spans Boise (Mountain) and Los Angeles (Pacific): 08:05 Pacific to 21:00 Mountain
    window = next_window(["America/Boise", "America/Los_Angeles"], US_RULE, CAMPAIGN_START, CAMPAIGN_START,
                         CAMPAIGN_START + timedelta(days=2))
    assert window == (at("2026-12-01 16:05"), at("2026-12-02 04:00"))


def test_a_campaign_over_several_days_uses_the_next_days_window():
    not_before = at("2026-12-02 02:30")  # after 21:00 in New York on Dec 1
    window = next_window(["America/New_York"], US_RULE, not_before, CAMPAIGN_START, CAMPAIGN_START + timedelta(days=3))
    assert window == (at("2026-12-02 13:05"), at("2026-12-03 02:00"))


def test_excluded_weekdays_skip_to_the_next_allowed_day():
    rule = CallingRule(US_RULE.window, frozenset({5, 6}))  # not on Saturday or Sunday
    saturday = at("2026-12-05 12:00")
    window = next_window(["America/New_York"], rule, saturday, saturday, saturday + timedelta(days=7))
    assert window == (at("2026-12-07 13:05"), at("2026-12-08 02:00"))  # Monday


def test_no_window_before_end_at():
    late = at("2026-12-02 02:30")  # 21:30 in New York
    assert next_window(["America/New_York"], US_RULE, late, late, late + timedelta(hours=8)) is None
    assert next_window([], US_RULE, late, late, late + timedelta(days=2)) is None


# -- daylight saving -----------------------------------------------------------------


@pytest.mark.parametrize(
    "not_before, start, end",
    [
        # 2027-03-14: clocks go forward in the US. Saturday EST, Sunday and Monday EDT.
        ("2027-03-13 12:00", "2027-03-13 13:05", "2027-03-14 02:00"),
        ("2027-03-14 02:30", "2027-03-14 12:05", "2027-03-15 01:00"),
        ("2027-03-15 02:00", "2027-03-15 12:05", "2027-03-16 01:00"),
        # 2026-11-01: clocks go back. Saturday EDT, Sunday EST.
        ("2026-10-31 11:00", "2026-10-31 12:05", "2026-11-01 01:00"),
        ("2026-11-01 02:00", "2026-11-01 13:05", "2026-11-02 02:00"),
    ],
)
def test_new_york_across_daylight_saving_changes(not_before, start, end):
    moment = at(not_before)
    assert next_window(["America/New_York"], US_RULE, moment, moment, moment + timedelta(days=3)) == (at(start), at(end))


@pytest.mark.parametrize(
    "start_at, local_windows",
    [
        # spring forward on Sunday 2027-03-14: EST on Saturday, EDT from Sunday
        ("2027-03-12 12:00", ["Fri 2027-03-12 08:05-21:00 EST", "Sat 2027-03-13 08:05-21:00 EST",
                              "Sun 2027-03-14 08:05-21:00 EDT", "Mon 2027-03-15 08:05-21:00 EDT"]),
        # fall back on Sunday 2026-11-01: EDT on Saturday, EST from Sunday
        ("2026-10-30 11:00", ["Fri 2026-10-30 08:05-21:00 EDT", "Sat 2026-10-31 08:05-21:00 EDT",
                              "Sun 2026-11-01 08:05-21:00 EST", "Mon 2026-11-02 08:05-21:00 EST"]),
    ],
)
def test_a_campaign_spanning_a_clock_change_gets_each_days_local_window(start_at, local_windows):
    """A chunk left unsent moves to the next day's window (as the tick does): 08:05-21:00 local every day."""
    start = at(start_at)
    end = start + timedelta(days=5)
    seen, not_before = [], start
    for _ in local_windows:
        window = next_window(["America/New_York"], US_RULE, not_before, start, end)
        seen.append(windows.describe_local("America/New_York", window))
        assert window[1] - window[0] == timedelta(hours=12, minutes=55)  # 13 local hours less the offset
        not_before = window[1]
    assert seen == local_windows


@pytest.mark.parametrize(
    "day, local_window, utc_start, utc_end",
    [
        # 02:00-02:59 does not exist on 2027-03-14: 01:30-03:30 is 06:30-07:30 UTC (one hour).
        ("2027-03-14 00:00", "01:30-03:30", "2027-03-14 06:30", "2027-03-14 07:30"),
        # 01:00-01:59 happens twice on 2026-11-01: a start there is read as the second time.
        ("2026-11-01 00:00", "01:30-03:30", "2026-11-01 06:30", "2026-11-01 08:30"),
        # ... and an end there as the first time.
        ("2026-11-01 00:00", "00:30-01:30", "2026-11-01 04:30", "2026-11-01 05:30"),
    ],
)
def test_local_times_that_do_not_exist_or_happen_twice_are_read_conservatively(day, local_window, utc_start, utc_end):
    rule = CallingRule(windows.parse_window(local_window))
    moment = at(day)
    window = next_window(["America/New_York"], rule, moment, moment, moment + timedelta(hours=20))
    assert window == (at(utc_start), at(utc_end))
    assert_inside(window, ["America/New_York"], rule)


# -- the property --------------------------------------------------------------------

ZONE_SETS = [
    ("America/New_York",), ("America/Chicago",), ("America/Denver",), ("America/Phoenix",),
    ("America/Los_Angeles",), ("Pacific/Honolulu",), ("America/Anchorage",), ("America/St_Johns",),
    ("America/Boise", "America/Los_Angeles"), ("America/Denver", "America/North_Dakota/Center"),
    ("Australia/Lord_Howe",), ("Europe/London",), ("Asia/Kolkata",), ("Pacific/Guam", "America/Puerto_Rico"),
]


def assert_inside(window, zone_names, rule: CallingRule) -> None:
    """Every moment of [start, end) is inside the rule's local hours, on an allowed day, in every zone."""
    start, end = window
    assert start < end
    checkpoints = {start, end - timedelta(seconds=1)}
    moment = start
    while moment < end:
        checkpoints.add(moment)
        moment += timedelta(minutes=10)
    for name in zone_names:
        zone = ZoneInfo(name)
        # the moments around each offset change inside the window
        for offset_change in _transitions(zone, start, end):
            checkpoints.update({offset_change - timedelta(seconds=1), offset_change})
        for moment in checkpoints:
            if not start <= moment < end:
                continue
            local = moment.astimezone(zone)
            minute = local.hour * 60 + local.minute
            assert rule.window.start_minute <= minute < rule.window.end_minute, (name, window, local)
            assert local.weekday() not in rule.excluded_weekdays, (name, window, local)


def _transitions(zone: ZoneInfo, start: datetime, end: datetime):
    moment, offset = start, start.astimezone(zone).utcoffset()
    while moment < end:
        moment += timedelta(minutes=15)
        if moment.astimezone(zone).utcoffset() != offset:
            offset = moment.astimezone(zone).utcoffset()
            low, high = moment - timedelta(minutes=15), moment
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == offset:
                    high = middle
                else:
                    low = middle
            yield high


clock_minutes = st.integers(0, 24 * 4 - 1).map(lambda quarter: quarter * 15)


@st.composite
def rules(draw) -> CallingRule:
    start = draw(clock_minutes)
    end = draw(st.integers(start // 15 + 1, 96).map(lambda quarter: quarter * 15))
    excluded = draw(st.frozensets(st.integers(0, 6), max_size=5))
    offset = timedelta(minutes=draw(st.sampled_from([0, 5, 15])))
    return CallingRule(DailyWindow(start, end), excluded, offset)


# Campaign times around the 2026/2027 daylight-saving changes and at random.
moments = st.one_of(
    st.datetimes(min_value=datetime(2026, 3, 6), max_value=datetime(2027, 12, 31)),
    st.sampled_from([datetime(2026, 11, 1, 5), datetime(2027, 3, 14, 6), datetime(2026, 3, 29, 0),
                     datetime(2026, 10, 4, 15), datetime(2026, 10, 25, 0)]),
).map(lambda naive: naive.replace(tzinfo=UTC))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zones=st.sampled_from(ZONE_SETS), rule=rules(), start=moments,
       hours=st.integers(1, 24 * 10), late_minutes=st.integers(0, 60 * 48))
def test_no_window_is_ever_outside_any_zones_local_hours(zones, rule, start, hours, late_minutes):
    end = start + timedelta(hours=hours)
    not_before = start + timedelta(minutes=late_minutes)
    window = next_window(zones, rule, not_before, start, end)
    if window is None:
        return
    assert max(start, not_before) <= window[0] and window[1] <= end
    assert window[1] - window[0] >= windows.MIN_WINDOW
    assert_inside(window, zones, rule)


# Every offset change of these zones in 2026-2027, approached from up to a day and a half before.
DST_CHANGES = [datetime(2026, 3, 8, 7), datetime(2026, 11, 1, 6), datetime(2027, 3, 14, 7), datetime(2026, 3, 29, 1),
               datetime(2026, 10, 25, 1), datetime(2026, 10, 3, 15), datetime(2026, 4, 4, 15)]
night_minutes = st.integers(0, 16).map(lambda quarter: quarter * 15)  # 00:00-04:00, where the clocks change


@st.composite
def night_rules(draw) -> CallingRule:
    start = draw(night_minutes)
    end = draw(st.integers(start // 15 + 1, 24).map(lambda quarter: quarter * 15))
    return CallingRule(DailyWindow(start, end), frozenset(), timedelta(minutes=draw(st.sampled_from([0, 5]))))


@settings(max_examples=300, deadline=None)
@given(zones=st.sampled_from(ZONE_SETS), rule=night_rules(), change=st.sampled_from(DST_CHANGES),
       before_minutes=st.integers(0, 36 * 60))
def test_windows_at_night_around_clock_changes(zones, rule, change, before_minutes):
    start = change.replace(tzinfo=UTC) - timedelta(minutes=before_minutes)
    window = next_window(zones, rule, start, start, start + timedelta(days=3))
    if window is not None:
        assert_inside(window, zones, rule)


# Real numbers from area codes with one or several zones, and numbers with none.
AREA_CODES = ["212", "312", "303", "602", "213", "808", "907", "208", "605", "915", "800", "787", "671", "250"]
numbers = st.builds(lambda area, line: f"+1{area}555{line:04d}", st.sampled_from(AREA_CODES),
                    st.integers(0, 9999))


@settings(max_examples=150, deadline=None)
@given(phones=st.lists(numbers, min_size=1, max_size=60), rule=rules(), start=moments,
       hours=st.integers(1, 24 * 7), chunk_size=st.integers(1, 7))
def test_every_chunk_fits_every_one_of_its_contacts_zones(phones, rule, start, hours, chunk_size):
    """The ingestion's assigner: contact sets -> chunks; each chunk's window fits every contact."""
    end = start + timedelta(hours=hours)
    assigner = ChunkAssigner(chunk_size, WindowPlan(rule, None, start, start, end))
    batch = [ParsedContact(i + 1, phone, phone, (), "pending") for i, phone in enumerate(phones)]
    new_chunks, rows = assigner.assign(batch)
    chunk_windows = {seq: (zones, (start_at, end_at)) for seq, zones, start_at, end_at in new_chunks}
    lookup = ZoneLookup()
    for row_number, raw, phone, _extra, status, reason, seq in rows:
        if status == "out_of_window":
            assert seq is None and reason
            assert lookup(phone) == () or next_window(lookup(phone), rule, start, start, end) is None
            continue
        zones, window = chunk_windows[seq]
        assert tuple(zones.split()) == lookup(phone)
        assert_inside(window, lookup(phone), rule)
    sizes: dict[int, int] = {}
    for row in rows:
        if row[6] is not None:
            sizes[row[6]] = sizes.get(row[6], 0) + 1
    assert all(size <= chunk_size for size in sizes.values())
