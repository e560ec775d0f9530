"""A step's `when:`: how each shape reads, when it holds, and how each mistake is named."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from vpbx import when

BRATISLAVA = ZoneInfo("Europe/Bratislava")


def parsed(value) -> when.When:
    errors = []
    condition = when.parse("w", value, lambda path, message: errors.append(f"{path}: {message}"))
    assert errors == [] and condition is not None
    return condition


def errors(value) -> list[str]:
    found = []
    assert when.parse("w", value, lambda path, message: found.append(f"{path}: {message}")) is None
    return found


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=BRATISLAVA)


# 2026-12-07 is a Monday.
@pytest.mark.parametrize(("days", "moment", "holds"), [
    ("mon-fri", "2026-12-07 12:00", True),
    ("mon-fri", "2026-12-11 23:59", True),
    ("mon-fri", "2026-12-12 00:00", False),
    ("sat,sun", "2026-12-13 10:00", True),
    ("sat,sun", "2026-12-07 10:00", False),
    (["mon", "wed"], "2026-12-09 10:00", True),
    (["mon", "wed"], "2026-12-08 10:00", False),
    ("fri-mon", "2026-12-13 10:00", True),   # wraps past Sunday
    ("fri-mon", "2026-12-07 10:00", True),
    ("fri-mon", "2026-12-08 10:00", False),
    ("Sun", "2026-12-13 10:00", True),
])
def test_days_hold_on_the_days_they_name(days, moment, holds):
    assert parsed({"days": days}).holds(at(moment)) is holds


@pytest.mark.parametrize(("hours", "moment", "holds"), [
    ("08:00-17:00", "2026-12-07 07:59", False),
    ("08:00-17:00", "2026-12-07 08:00", True),
    ("08:00-17:00", "2026-12-07 16:59", True),
    ("08:00-17:00", "2026-12-07 17:00", False),   # the end is not in the range
    ("22:00-06:00", "2026-12-07 21:59", False),
    ("22:00-06:00", "2026-12-07 22:00", True),
    ("22:00-06:00", "2026-12-07 23:59", True),
    ("22:00-06:00", "2026-12-08 00:00", True),    # across midnight
    ("22:00-06:00", "2026-12-08 05:59", True),
    ("22:00-06:00", "2026-12-08 06:00", False),
    ("17:00-24:00", "2026-12-07 23:59", True),
    ("17:00-24:00", "2026-12-08 00:00", False),
    (["08:00-12:00", "13:00-17:00"], "2026-12-07 12:30", False),
    (["08:00-12:00", "13:00-17:00"], "2026-12-07 13:00", True),
])
def test_hours_hold_from_the_start_to_before_the_end(hours, moment, holds):
    assert parsed({"hours": hours}).holds(at(moment)) is holds


@pytest.mark.parametrize(("dates", "moment", "holds"), [
    (["12-24", "12-25"], "2026-12-24 00:00", True),
    (["12-24", "12-25"], "2031-12-25 23:59", True),   # every year
    (["12-24", "12-25"], "2026-12-26 00:00", False),
    (["2026-04-06"], "2026-04-06 10:00", True),        # one year's Easter Monday
    (["2026-04-06"], "2027-04-06 10:00", False),
    ([dt.date(2026, 4, 6)], "2026-04-06 10:00", True),  # YAML's unquoted date
    ("02-29", "2028-02-29 10:00", True),
])
def test_dates_hold_on_their_day_every_year_or_once(dates, moment, holds):
    assert parsed({"dates": dates}).holds(at(moment)) is holds


def test_keys_are_all_needed_and_entries_of_one_key_any():
    office = parsed({"days": "mon-fri", "hours": ["08:00-12:00", "13:00-17:00"]})
    assert office.holds(at("2026-12-07 09:00"))
    assert not office.holds(at("2026-12-07 12:30"))
    assert not office.holds(at("2026-12-12 09:00"))


# Europe/Bratislava moves to summer time on 2026-03-29 (02:00 -> 03:00) and back on
# 2026-10-25 (03:00 -> 02:00): office hours follow the wall clock, not UTC.
@pytest.mark.parametrize(("utc", "holds"), [
    ("2026-03-27 06:30", False),   # 07:30 CET
    ("2026-03-27 07:30", True),    # 08:30 CET
    ("2026-03-30 06:30", True),    # 08:30 CEST: the same UTC hour is now in
    ("2026-03-30 15:30", False),   # 17:30 CEST
    ("2026-10-23 14:30", True),    # 16:30 CEST
    ("2026-10-23 15:30", False),   # 17:30 CEST
    ("2026-10-26 15:30", True),    # 16:30 CET: the same UTC hour is in again
    ("2026-10-26 06:30", False),   # 07:30 CET
])
def test_office_hours_follow_the_change_of_summer_time(utc, holds):
    moment = dt.datetime.fromisoformat(utc).replace(tzinfo=dt.UTC).astimezone(BRATISLAVA)
    assert parsed({"days": "mon-fri", "hours": "08:00-17:00"}).holds(moment) is holds


def test_the_night_of_the_change_is_read_on_the_wall_clock():
    night = parsed({"hours": "02:00-03:00"})
    # 02:30 does not exist on 2026-03-29; on 2026-10-25 it comes twice, and holds both times.
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC).astimezone(BRATISLAVA)
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC).astimezone(BRATISLAVA)
    assert first.hour == second.hour == 2
    assert night.holds(first) and night.holds(second)
    spring = dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC).astimezone(BRATISLAVA)
    assert spring.hour == 3 and not night.holds(spring)


@pytest.mark.parametrize(("value", "path", "words"), [
    ({"days": "mnday"}, "w.days[0]", "'mnday' is not a day"),
    ({"days": ["mon", "fry"]}, "w.days[1]", "'fry' is not a day"),
    ({"days": "mon-fri-sun"}, "w.days[0]", "is not a day"),
    ({"hours": "8-17"}, "w.hours[0]", "like \"08:00-17:00\""),
    ({"hours": "08:00-25:00"}, "w.hours[0]", "not a time range of a day"),
    ({"hours": "08:61-17:00"}, "w.hours[0]", "not a time range of a day"),
    ({"hours": "08:00-08:00"}, "w.hours[0]", "starts where it ends"),
    ({"hours": 480}, "w.hours[0]", "in quotes"),    # YAML 1.1 reads 08:00 as 480
    ({"dates": ["12-32"]}, "w.dates[0]", "'12-32' is not a date"),
    ({"dates": ["2026-02-29"]}, "w.dates[0]", "is not a date"),
    ({"dates": ["24.12."]}, "w.dates[0]", "like \"12-24\""),
    ({"day": "mon"}, "w.day", "unknown key"),
    ({"days": []}, "w.days", "at least one"),
    ({}, "w", "must be a mapping"),
    ("mon-fri", "w", "must be a mapping"),
])
def test_each_mistake_is_named_with_its_key(value, path, words):
    assert any(e.startswith(f"{path}: ") and words in e for e in errors(value)), errors(value)


def test_a_condition_reads_back_as_written():
    source = {"days": "mon-fri", "hours": "08:00-17:00", "dates": [dt.date(2026, 4, 6), "12-24"]}
    dumped = when.dumped(parsed(source))
    assert dumped == {"days": ["mon-fri"], "hours": ["08:00-17:00"], "dates": ["2026-04-06", "12-24"]}
    assert parsed(dumped) == parsed(source)
