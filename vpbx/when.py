"""A scheme step's `when:`: the days, hours and dates in which the step is tried.

Parsed once per routing load into sets and minute ranges, so that asking
whether a step holds at a moment is a few comparisons. Keys are ANDed,
entries of one key ORed. Days and hours are read of the same moment: a
range that crosses midnight ("22:00-06:00") on `days: fri` holds on Friday
from midnight to 06:00 and from 22:00 to midnight, as a PBX's time rule does.
"""

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
KEYS = ("days", "hours", "dates")
_HOURS = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")
_DATE = re.compile(r"(?:([0-9]{4})-)?([0-9]{2})-([0-9]{2})")
MINUTES_A_DAY = 24 * 60

Error = Callable[[str, str], None]


@dataclass(frozen=True)
class When:
    days: frozenset[int] | None = None
    # (start, end) in minutes from midnight, end exclusive; start > end crosses midnight.
    hours: tuple[tuple[int, int], ...] | None = None
    # (month, day) every year, and dates of one year.
    yearly: frozenset[tuple[int, int]] = frozenset()
    once: frozenset[dt.date] = frozenset()
    # What dump() writes back: the same condition in the inventory's words.
    source: Mapping[str, list[str]] = field(default_factory=dict, compare=False)

    def holds(self, now: dt.datetime) -> bool:
        if self.days is not None and now.weekday() not in self.days:
            return False
        if self.hours is not None:
            minute = now.hour * 60 + now.minute
            if not any(start <= minute < end if start < end else minute >= start or minute < end
                       for start, end in self.hours):
                return False
        if self.yearly or self.once:
            today = now.date()
            if (today.month, today.day) not in self.yearly and today not in self.once:
                return False
        return True


def parse(path: str, value: Any, error: Error) -> When | None:
    """The condition `value` at `path`, or None after reporting each problem through `error`."""
    if not isinstance(value, Mapping) or not value:
        error(path, f"must be a mapping with any of {', '.join(KEYS)}, got {value!r}")
        return None
    problems = []

    def report(where: str, message: str) -> None:
        problems.append(where)
        error(where, message)

    for key in value:
        if key not in KEYS:
            report(f"{path}.{key}", f"unknown key (allowed: {', '.join(KEYS)})")
    source = {key: _entries(value[key]) for key in KEYS if key in value}
    days = hours = None
    yearly, once = set(), set()
    if "days" in source:
        days = set()
        for i, entry in enumerate(source["days"]):
            days |= _days(f"{path}.days[{i}]", entry, report)
    if "hours" in source:
        hours = tuple(r for i, entry in enumerate(source["hours"])
                      if (r := _hours(f"{path}.hours[{i}]", entry, report)) is not None)
    for i, entry in enumerate(source.get("dates", ())):
        date = _date(f"{path}.dates[{i}]", entry, report)
        if isinstance(date, dt.date):
            once.add(date)
        elif date is not None:
            yearly.add(date)
    for key, entries in source.items():
        if not entries:
            report(f"{path}.{key}", "needs at least one entry")
    if problems:
        return None
    return When(None if days is None else frozenset(days), hours, frozenset(yearly), frozenset(once),
                source)


def _entries(value: Any) -> list:
    """`"mon-fri"`, `"sat,sun"` and `[mon, wed]` alike: a list of entries."""
    if isinstance(value, list):
        return [str(v).strip() if isinstance(v, str) else v for v in value]
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    return [value]


def _days(path: str, entry: Any, report: Error) -> set[int]:
    if not isinstance(entry, str):
        report(path, f"must be a day like mon or a range like mon-fri, got {entry!r}")
        return set()
    ends = entry.lower().split("-")
    if len(ends) > 2 or not all(end in DAYS for end in ends):
        bad = next((end for end in ends if end not in DAYS), entry)
        report(path, f"{bad!r} is not a day (days: {', '.join(DAYS)}; a range: mon-fri)")
        return set()
    first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
    # A range may wrap past Sunday: fri-mon is fri, sat, sun, mon.
    return {(first + i) % 7 for i in range((last - first) % 7 + 1)}


def _hours(path: str, entry: Any, report: Error) -> tuple[int, int] | None:
    match = _HOURS.fullmatch(entry) if isinstance(entry, str) else None
    if match is None:
        report(path, f"must be a time range like \"08:00-17:00\" (in quotes), got {entry!r}")
        return None
    h1, m1, h2, m2 = map(int, match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > MINUTES_A_DAY:
        report(path, f"{entry!r} is not a time range of a day (00:00 to 24:00)")
        return None
    if start == end % MINUTES_A_DAY:
        report(path, f"{entry!r} starts where it ends: leave hours out for the whole day")
        return None
    return start, end


def _date(path: str, entry: Any, report: Error) -> tuple[int, int] | dt.date | None:
    # YAML reads an unquoted 2026-12-24 as a date.
    if isinstance(entry, dt.date) and not isinstance(entry, dt.datetime):
        return entry
    match = _DATE.fullmatch(entry) if isinstance(entry, str) else None
    if match is None:
        report(path, f"must be a date like \"12-24\" (every year) or \"2026-12-24\", got {entry!r}")
        return None
    year, month, day = match.groups()
    try:
        # A leap year checks an every-year date: 02-29 is a date, 02-30 is not.
        date = dt.date(int(year or 2024), int(month), int(day))
    except ValueError:
        report(path, f"{entry!r} is not a date")
        return None
    return date if year else (date.month, date.day)


def dumped(when: When) -> dict[str, list[str]]:
    return {key: [v.isoformat() if isinstance(v, dt.date) else v for v in entries]
            for key, entries in when.source.items()}
