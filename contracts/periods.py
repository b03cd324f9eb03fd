"""Periods `[start, end)` in the company time zone with ISO names
(`2026-03`, `2026-W11`, `2026-03-14`), stored and compared in UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Final, Literal
from zoneinfo import ZoneInfo

PeriodKind = Literal["month", "week", "day"]

_MONTH: Final = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK: Final = re.compile(r"^(\d{4})-W(\d{2})$")
_DAY: Final = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_WEEK_IN_MONTH: Final = re.compile(r"^(\d{4})-(\d{2})-W(\d{2})$")
_DATE_ONLY: Final = re.compile(r"(\d{4}-\d{2}-\d{2})(Z|[+-]\d{2}:\d{2})?")


class PeriodError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Period:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    name: str
    kind: PeriodKind

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= require_aware(moment) < self.end

    def next(self, zone: str) -> Period:
        return containing(self.end, self.kind, zone)


def _iso_year_of(year: int, month: int, week: int) -> tuple[int, int]:
    """The ISO year of week `week` as seen from a month: week 1 seen from
    December and week 52/53 seen from January belong to the neighbouring year."""
    if month == 12 and week == 1:
        return year + 1, week
    if month == 1 and week >= 52:
        return year - 1, week
    return year, week


def parse_time(text: str) -> datetime:
    """An ISO 8601 time that names its zone (`2026-03-14T12:00:00+08:00`, `Z` for
    UTC), kept in that zone: the one parser of the times people and events give
    (decision 8, docs/architecture.md: a timestamp without a zone is refused)."""
    date_only = _DATE_ONLY.fullmatch(text.strip())
    if date_only:
        # Python would read 2026-12-01+08:00 as 08:00 on a naive day: a date is not a time.
        raise PeriodError(f"{text} is a date, not a time; give a time with its zone, for example "
                          f"{date_only.group(1)}T00:00:00{date_only.group(2) or '+08:00'}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise PeriodError(f"{text} is not an ISO time; give one with its zone, for example 2026-03-14T12:00:00+08:00") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PeriodError(f"{text} has no time zone; give one, for example {moment.isoformat()}+08:00")
    return moment


def require_aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PeriodError(f"timestamp {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _build(kind: PeriodKind, first_day: date, last_day_exclusive: date, name: str, zone: ZoneInfo) -> Period:
    return Period(_local_midnight(first_day, zone), _local_midnight(last_day_exclusive, zone), name, kind)


def _next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def containing(moment: datetime, kind: PeriodKind, zone: str) -> Period:
    """The period of `kind` that contains `moment`, in the company time zone."""
    return _containing_day(require_aware(moment).astimezone(_zone(zone)).date(), kind, zone)


@lru_cache(maxsize=64)
def _zone(zone: str) -> ZoneInfo:
    return ZoneInfo(zone)


@lru_cache(maxsize=4096)
def _containing_day(local: date, kind: PeriodKind, zone: str) -> Period:
    """Periods are immutable and a day's never changes: every event of a batch
    is billed in one of a few periods, so they are built once per local day."""
    tz = _zone(zone)
    if kind == "month":
        first = local.replace(day=1)
        return _build(kind, first, _next_month(first), f"{first:%Y-%m}", tz)
    if kind == "week":
        iso_year, iso_week, iso_weekday = local.isocalendar()
        first = local - timedelta(days=iso_weekday - 1)
        return _build(kind, first, first + timedelta(days=7), f"{iso_year}-W{iso_week:02d}", tz)
    if kind == "day":
        return _build(kind, local, local + timedelta(days=1), f"{local:%Y-%m-%d}", tz)
    raise PeriodError(f"unknown period kind {kind!r}")


def billing_period(moment: datetime, kind: PeriodKind, zone: str) -> Period:
    """The billing period of `kind` containing `moment`, nested in its month: an
    ISO week that crosses a month boundary is split there, and each part is
    named by its month and week (`2026-03-W14`, `2026-04-W14`)."""
    period = containing(moment, kind, zone)
    if kind != "week":
        return period
    month = containing(moment, "month", zone)
    if month.start <= period.start and period.end <= month.end:
        return period
    return Period(max(period.start, month.start), min(period.end, month.end), f"{month.name}-{period.name[-3:]}", "week")


def parse(name: str, zone: str) -> Period:
    """A period from its name: ISO month, week or day, or a week part within a month."""
    tz = ZoneInfo(zone)
    if match := _WEEK_IN_MONTH.match(name):
        month = parse(f"{match[1]}-{match[2]}", zone)
        try:
            first = date.fromisocalendar(*_iso_year_of(int(match[1]), int(match[2]), int(match[3])), 1)
        except ValueError as error:
            raise PeriodError(f"no such week {name!r}") from error
        week = _build("week", first, first + timedelta(days=7), name, tz)
        if week.end <= month.start or week.start >= month.end:
            raise PeriodError(f"week {match[3]} does not touch {month.name}")
        return Period(max(week.start, month.start), min(week.end, month.end), name, "week")
    if match := _MONTH.match(name):
        try:
            first = date(int(match[1]), int(match[2]), 1)
        except ValueError as error:
            raise PeriodError(f"no such month {name!r}") from error
        return _build("month", first, _next_month(first), name, tz)
    if match := _WEEK.match(name):
        try:
            first = date.fromisocalendar(int(match[1]), int(match[2]), 1)
        except ValueError as error:
            raise PeriodError(f"no such week {name!r}") from error
        return _build("week", first, first + timedelta(days=7), name, tz)
    if match := _DAY.match(name):
        try:
            first = date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError as error:
            raise PeriodError(f"no such day {name!r}") from error
        return _build("day", first, first + timedelta(days=1), name, tz)
    raise PeriodError(f"{name!r} is not a period name (2026-03, 2026-W11 or 2026-03-14)")
