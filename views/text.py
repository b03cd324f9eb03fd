"""The forms every view shares: a time in the company's zone, a period, money
rounded for reading, and aligned tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tokenhub.contracts.money import round_to_minor


def timestamp(moment: datetime) -> str:
    """The one form of a time in JSON: RFC 3339 in UTC, to the microsecond."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _offset(moment: datetime) -> str:
    text = f"{moment:%z}"
    return f"{text[:3]}:{text[3:]}"


def local(moment: datetime, zone: str, *, seconds: bool = False) -> str:
    """A time as people read it: in the company's zone, with the zone shown."""
    shown = moment.astimezone(ZoneInfo(zone))
    clock = f"{shown:%Y-%m-%d %H:%M:%S}" if seconds else f"{shown:%Y-%m-%d %H:%M}"
    return f"{clock} {zone} ({_offset(shown)})"


def period_range(start: datetime, end: datetime, zone: str) -> str:
    """A period `[start, end)` in company time: `2026-03-01 00:00 to 2026-04-01 00:00 Asia/Shanghai (+08:00)`."""
    first, last = start.astimezone(ZoneInfo(zone)), end.astimezone(ZoneInfo(zone))
    return f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} {zone} ({_offset(first)})"


def money(amount: Decimal, places: int = 2) -> str:
    """Display only: rounded for reading, never for arithmetic."""
    return f"{round_to_minor(amount, places):,.{places}f}"


def figure(value: int | None) -> str:
    """A count that may be unmeasured: `?` then."""
    return "?" if value is None else f"{value:,}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> str:
    body = [list(headers)] + [list(row) for row in rows]
    widths = [max(len(row[column]) for row in body) for column in range(len(headers))]
    lines = []
    for number, row in enumerate(body):
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def cell(value: Any, zone: str) -> str:
    """A value in a table cell: times in the company's zone, lists joined, "-" for none."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return local(value, zone)
    if isinstance(value, list):
        return ", ".join(cell(item, zone) if not isinstance(item, dict) else f"{item.get('bu')} {item.get('percent')}%"
                         for item in value)
    return str(value)


def rows_table(rows: list[dict[str, Any]], columns: list[str], zone: str) -> str:
    """These columns of rows as a table, each value a `cell`."""
    return table(columns, [[cell(row[column], zone) for column in columns] for row in rows], right=set())
