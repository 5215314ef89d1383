"""Shift windows at their edges: inclusive start, exclusive end, midnight, weekdays, zones, DST.

Every instant is an epoch float built from an aware `datetime` in the zone under test, so
a failure reads as a wall-clock time rather than a number.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from broker.policy.shift import Occurrence, Shift, build_shift, parse_clock, parse_days

SHANGHAI = "Asia/Shanghai"
URUMQI = "Asia/Urumqi"
NEW_YORK = "America/New_York"
HOUR = 3600.0

# A plain week with no DST anywhere near it: Monday 2026-05-04 .. Sunday 2026-05-10.
MON, TUE, WED, THU, FRI, SAT, SUN = (date(2026, 5, 4) + timedelta(days=n) for n in range(7))
WEEK = (MON, TUE, WED, THU, FRI, SAT, SUN)


def at(day: date, hh: int, mm: int = 0, ss: int = 0, zone: str = SHANGHAI, fold: int = 0) -> float:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=ZoneInfo(zone), fold=fold).timestamp()


def wall(when: float, zone: str) -> tuple[date, int, int]:
    moment = datetime.fromtimestamp(when, ZoneInfo(zone))
    return moment.date(), moment.hour, moment.minute


def inside(shift: Shift, when: float) -> bool:
    return shift.occurrence_at(when) is not None


def test_the_test_week_starts_on_a_monday() -> None:
    assert [d.weekday() for d in WEEK] == list(range(7))


# --- a day window ---------------------------------------------------------------------


def test_day_shift_start_is_inclusive_and_end_exclusive_to_the_second() -> None:
    shift = build_shift("day-cn", "08:00", "18:00", "Mon-Fri", SHANGHAI)
    assert not inside(shift, at(TUE, 7, 59, 59))
    assert inside(shift, at(TUE, 8, 0, 0))
    assert inside(shift, at(TUE, 17, 59, 59))
    assert not inside(shift, at(TUE, 18, 0, 0))
    assert shift.occurrence_at(at(TUE, 12)) == Occurrence(at(TUE, 8), at(TUE, 18))
    assert not shift.wraps


def test_day_shift_is_off_on_days_it_does_not_start() -> None:
    shift = build_shift("day-cn", "08:00", "18:00", "Mon-Fri", SHANGHAI)
    assert inside(shift, at(FRI, 12))
    assert not inside(shift, at(SAT, 12))
    assert not inside(shift, at(SUN, 12))
    assert inside(shift, at(MON, 8))


# --- a window across midnight ---------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "hh", "mm", "ss", "expected"),
    [
        (MON, 21, 59, 59, False),
        (MON, 22, 0, 0, True),
        (MON, 23, 59, 59, True),
        (TUE, 0, 0, 0, True),
        (TUE, 5, 59, 59, True),
        (TUE, 6, 0, 0, False),
        (TUE, 12, 0, 0, False),
    ],
)
def test_night_shift_wraps_midnight(day: date, hh: int, mm: int, ss: int, expected: bool) -> None:
    shift = build_shift("night-cn", "22:00", "06:00", "daily", SHANGHAI)
    assert shift.wraps
    assert inside(shift, at(day, hh, mm, ss)) is expected


def test_night_occurrence_runs_from_the_evening_to_the_next_morning() -> None:
    shift = build_shift("night-cn", "22:00", "06:00", "daily", SHANGHAI)
    evening = shift.occurrence_at(at(MON, 23, 59, 59))
    morning = shift.occurrence_at(at(TUE, 5, 59, 59))
    assert evening == morning == Occurrence(at(MON, 22), at(TUE, 6))
    assert morning is not None
    assert morning.end - morning.start == 8 * HOUR


def test_weekday_night_shift_started_on_friday_covers_saturday_morning_only() -> None:
    shift = build_shift("night", "22:00", "06:00", "Mon-Fri", SHANGHAI)
    assert shift.occurrence_at(at(SAT, 2)) == Occurrence(at(FRI, 22), at(SAT, 6))
    assert not inside(shift, at(SAT, 6))
    assert not inside(shift, at(SAT, 23))
    assert not inside(shift, at(SUN, 2))
    assert not inside(shift, at(SUN, 23))
    # Sunday night is not a start day, so early Monday is off too; Monday night is on.
    assert not inside(shift, at(MON, 2))
    assert inside(shift, at(MON, 22))


# --- day sets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "on"),
    [
        ("Mon-Fri", {MON, TUE, WED, THU, FRI}),
        ("Fri-Mon", {FRI, SAT, SUN, MON}),
        ("Sat+Sun", {SAT, SUN}),
        ("Mon+Wed+Fri", {MON, WED, FRI}),
        ("Mon-Sat", {MON, TUE, WED, THU, FRI, SAT}),
        ("Sun-Sun", {SUN}),
        ("Thu", {THU}),
        ("daily", set(WEEK)),
    ],
)
def test_day_sets(days: str, on: set[date]) -> None:
    shift = build_shift("s", "09:00", "17:00", days, SHANGHAI)
    assert shift.days == frozenset(d.weekday() for d in on)
    for day in WEEK:
        assert inside(shift, at(day, 9)) is (day in on), day.strftime("%a")


def test_fri_to_mon_wrap_with_a_night_window_reaches_tuesday_morning() -> None:
    shift = build_shift("weekend-night", "22:00", "06:00", "Fri-Mon", SHANGHAI)
    assert not inside(shift, at(FRI, 2))  # Thursday night is not a start day
    assert inside(shift, at(SAT, 2))
    assert inside(shift, at(TUE, 5, 59, 59))  # Monday night runs into Tuesday
    assert not inside(shift, at(TUE, 22))
    assert not inside(shift, at(WED, 2))


def test_parse_days_rejects_an_unknown_day() -> None:
    assert parse_days("Fri-Mon") == frozenset({4, 5, 6, 0})
    with pytest.raises(ValueError, match=r"day 'Fry' is not one of Mon, Tue, Wed, Thu, Fri, Sat, Sun"):
        parse_days("Mon-Fry")


# --- whole days -----------------------------------------------------------------------


def test_all_day_shift_covers_every_second() -> None:
    shift = build_shift("always", "00:00", "24:00", "daily", SHANGHAI)
    assert not shift.wraps
    for day in WEEK:
        for when in (at(day, 0), at(day, 12), at(day, 23, 59, 59)):
            assert inside(shift, when)
    # Midnight belongs to the new day's occurrence (the old one ends there, exclusive).
    assert shift.occurrence_at(at(TUE, 0)) == Occurrence(at(TUE, 0), at(WED, 0))
    assert shift.occurrence_at(at(MON, 23, 59, 59)) == Occurrence(at(MON, 0), at(TUE, 0))


def test_all_day_shift_on_one_day_ends_at_the_next_midnight() -> None:
    shift = build_shift("monday", "00:00", "24:00", "Mon", SHANGHAI)
    assert not inside(shift, at(SUN, 23, 59, 59))
    assert inside(shift, at(MON, 0))
    assert inside(shift, at(MON, 23, 59, 59))
    assert not inside(shift, at(TUE, 0))


def test_evening_shift_ending_at_24_00() -> None:
    shift = build_shift("late", "18:00", "24:00", "Mon-Fri", SHANGHAI)
    assert shift.occurrence_at(at(FRI, 23, 59, 59)) == Occurrence(at(FRI, 18), at(SAT, 0))
    assert not inside(shift, at(SAT, 0))


# --- time zones -----------------------------------------------------------------------


def test_same_instant_inside_a_shanghai_shift_is_outside_the_same_shift_in_urumqi() -> None:
    shanghai = build_shift("day-cn", "08:00", "18:00", "Mon-Fri", SHANGHAI)
    urumqi = build_shift("day-xj", "08:00", "18:00", "Mon-Fri", URUMQI)
    instant = datetime(2026, 5, 5, 1, 30, tzinfo=ZoneInfo("UTC")).timestamp()  # 09:30 Shanghai, 07:30 Urumqi
    assert inside(shanghai, instant)
    assert not inside(urumqi, instant)
    assert shanghai.occurrence_at(instant) == Occurrence(at(TUE, 8), at(TUE, 18))
    # Half an hour later it is 08:00 in Urumqi (UTC+6) and that shift starts.
    assert urumqi.next_start(instant) == instant + 0.5 * HOUR
    assert inside(urumqi, instant + 0.5 * HOUR)


def test_weekday_is_decided_in_the_shift_zone_not_in_utc() -> None:
    shift = build_shift("early-cn", "06:00", "10:00", "Mon-Fri", SHANGHAI)
    # Monday 07:30 in Shanghai is still Sunday 23:30 in UTC.
    monday_morning = at(MON, 7, 30)
    assert datetime.fromtimestamp(monday_morning, ZoneInfo("UTC")).weekday() == 6
    assert inside(shift, monday_morning)
    # Saturday 07:30 in Shanghai is Friday in UTC, and still off.
    assert not inside(shift, at(SAT, 7, 30))


# --- DST (America/New_York: spring forward 2026-03-08, fall back 2026-11-01) ---------


def test_dst_spring_forward_occurrence_is_three_hours_of_wall_clock_one_to_five() -> None:
    shift = build_shift("early", "01:00", "05:00", "daily", NEW_YORK)
    spring = date(2026, 3, 8)
    found = shift.occurrence_at(at(spring, 3, 30, zone=NEW_YORK))
    assert found is not None
    assert found.end - found.start == 3 * HOUR
    assert wall(found.start, NEW_YORK) == (spring, 1, 0)
    assert wall(found.end, NEW_YORK) == (spring, 5, 0)
    assert inside(shift, at(spring, 4, 59, 59, zone=NEW_YORK))
    assert not inside(shift, at(spring, 5, zone=NEW_YORK))
    assert not inside(shift, at(spring, 0, 59, 59, zone=NEW_YORK))


def test_dst_fall_back_occurrence_is_five_hours_and_covers_the_repeated_hour_twice() -> None:
    shift = build_shift("early", "01:00", "05:00", "daily", NEW_YORK)
    fall = date(2026, 11, 1)
    found = shift.occurrence_at(at(fall, 3, zone=NEW_YORK))
    assert found is not None
    assert found.end - found.start == 5 * HOUR
    assert found.start == at(fall, 1, zone=NEW_YORK, fold=0)  # the first 01:00 (EDT)
    assert wall(found.start, NEW_YORK) == (fall, 1, 0)
    assert wall(found.end, NEW_YORK) == (fall, 5, 0)
    assert shift.occurrence_at(at(fall, 1, 30, zone=NEW_YORK, fold=0)) == found
    assert shift.occurrence_at(at(fall, 1, 30, zone=NEW_YORK, fold=1)) == found


def test_dst_ordinary_day_is_four_hours() -> None:
    shift = build_shift("early", "01:00", "05:00", "daily", NEW_YORK)
    found = shift.occurrence_at(at(date(2026, 3, 7), 2, zone=NEW_YORK))
    assert found is not None
    assert found.end - found.start == 4 * HOUR


def test_dst_night_shift_across_spring_forward_ends_on_the_right_wall_time() -> None:
    shift = build_shift("night", "22:00", "06:00", "daily", NEW_YORK)
    found = shift.occurrence_at(at(date(2026, 3, 8), 4, zone=NEW_YORK))
    assert found is not None
    assert wall(found.start, NEW_YORK) == (date(2026, 3, 7), 22, 0)
    assert wall(found.end, NEW_YORK) == (date(2026, 3, 8), 6, 0)
    assert found.end - found.start == 7 * HOUR


def test_dst_next_start_lands_on_local_wall_time() -> None:
    shift = build_shift("early", "01:00", "05:00", "daily", NEW_YORK)
    after = at(date(2026, 3, 7), 12, zone=NEW_YORK)
    start = shift.next_start(after)
    assert start is not None
    assert wall(start, NEW_YORK) == (date(2026, 3, 8), 1, 0)
    following = shift.next_start(start)
    assert following is not None
    assert wall(following, NEW_YORK) == (date(2026, 3, 9), 1, 0)
    assert following - start == 23 * HOUR


# --- next_start -----------------------------------------------------------------------


def test_next_start_is_strictly_after() -> None:
    shift = build_shift("day-cn", "08:00", "18:00", "Mon-Fri", SHANGHAI)
    assert shift.next_start(at(TUE, 7, 59, 59)) == at(TUE, 8)
    assert shift.next_start(at(TUE, 8)) == at(WED, 8)
    assert shift.next_start(at(TUE, 12)) == at(WED, 8)


def test_next_start_skips_days_off() -> None:
    shift = build_shift("day-cn", "08:00", "18:00", "Mon-Fri", SHANGHAI)
    assert shift.next_start(at(FRI, 8)) == at(MON + timedelta(days=7), 8)
    assert shift.next_start(at(SAT, 12)) == at(MON + timedelta(days=7), 8)


def test_next_start_of_a_weekly_shift_is_a_week_later() -> None:
    shift = build_shift("weekly", "08:00", "09:00", "Wed", SHANGHAI)
    assert shift.next_start(at(WED, 8)) == at(WED + timedelta(days=7), 8)
    assert shift.next_start(at(WED, 7, 59, 59)) == at(WED, 8)


def test_next_start_of_a_night_shift_from_inside_it() -> None:
    shift = build_shift("night", "22:00", "06:00", "Mon-Fri", SHANGHAI)
    assert shift.next_start(at(SAT, 2)) == at(MON + timedelta(days=7), 22)
    assert shift.next_start(at(TUE, 2)) == at(TUE, 22)


# --- parse errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "days", "zone", "message"),
    [
        ("25:00", "18:00", "Mon-Fri", SHANGHAI, r"time '25:00' is out of range"),
        ("08:00", "24:01", "Mon-Fri", SHANGHAI, r"time '24:01' is out of range"),
        ("24:00", "06:00", "Mon-Fri", SHANGHAI, r"time '24:00' is out of range"),
        ("08:60", "18:00", "Mon-Fri", SHANGHAI, r"time '08:60' is out of range"),
        ("8h00", "18:00", "Mon-Fri", SHANGHAI, r"time '8h00' is not HH:MM"),
        ("08:0", "18:00", "Mon-Fri", SHANGHAI, r"time '08:0' is not HH:MM"),
        ("", "18:00", "Mon-Fri", SHANGHAI, r"time '' is not HH:MM"),
        ("-1:00", "18:00", "Mon-Fri", SHANGHAI, r"time '-1:00' is not HH:MM"),
        ("08:00", "18:00", "Mon-Fry", SHANGHAI, r"day 'Fry' is not one of Mon, Tue"),
        ("08:00", "18:00", "mon-fri", SHANGHAI, r"day 'mon' is not one of Mon, Tue"),
        ("08:00", "18:00", "Mon-", SHANGHAI, r"day '' is not one of"),
        ("08:00", "18:00", "Weekdays", SHANGHAI, r"day 'Weekdays' is not one of"),
        ("08:00", "18:00", "Mon-Fri", "Asia/Beijing", r"time zone 'Asia/Beijing' is unknown \(use an IANA name"),
        ("08:00", "18:00", "Mon-Fri", "../etc/passwd", r"time zone '../etc/passwd' is unknown"),
        ("08:00", "08:00", "Mon-Fri", SHANGHAI, r"shift 's' starts and ends at 08:00: it is empty"),
        ("00:00", "00:00", "daily", SHANGHAI, r"shift 's' starts and ends at 00:00: it is empty"),
    ],
)
def test_build_shift_refuses(start: str, end: str, days: str, zone: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_shift("s", start, end, days, zone)


def test_24_00_is_accepted_only_as_an_end() -> None:
    assert parse_clock("24:00", allow_24=True) == 24 * 60
    with pytest.raises(ValueError, match="out of range"):
        parse_clock("24:00", allow_24=False)
    assert parse_clock("00:00", allow_24=False) == 0
    assert parse_clock("23:59", allow_24=False) == 23 * 60 + 59


@pytest.mark.parametrize("zone", ["Asia", "America/Indiana"])
def test_zone_naming_a_region_directory_is_a_clear_value_error(zone: str) -> None:
    pytest.importorskip("tzdata", reason="the crash needs the tzdata package (the system zoneinfo path is safe)")
    with pytest.raises(ValueError, match=f"time zone '{zone}' is unknown"):
        build_shift("s", "08:00", "18:00", "Mon-Fri", zone)
