"""How the CLI shows things: aligned tables for people, stable JSON for tools."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

import orjson
from pydantic import BaseModel

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine
from tokenhub.contracts.pricebook import BookIndex, PriceSource, price_source
from tokenhub.contracts.money import round_to_minor
from tokenhub.services.ledger.queries import Balance

T = TypeVar("T")
PROGRESS_STEPS = 10


def progress(items: Sequence[T], label: str) -> Iterator[T]:
    """Yield items, reporting every tenth on stderr so long work shows it moves."""
    total = len(items)
    step = max(1, total // PROGRESS_STEPS)
    for index, item in enumerate(items, start=1):
        yield item
        if index % step == 0 or index == total:
            ending = "" if sys.stderr.isatty() and index < total else "\n"
            prefix = "\r" if sys.stderr.isatty() else ""
            print(f"{prefix}{label}: {index}/{total} ({100 * index // max(total, 1)}%)", end=ending,
                  file=sys.stderr, flush=True)


def progress_bar(what: str, done: int, total: int | None) -> None:
    """Long runs show that they move, on stderr so that --json output stays clean."""
    if total:
        width = 30
        filled = width * min(done, total) // total
        print(f"\r{what}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    else:
        print(f"{what}: {done}", file=sys.stderr, flush=True)


_ISO_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})")
_INTEGER: Final = re.compile(r"-?\d+(\.0+)?")


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


def jsonable(value: Any, key: str = "") -> Any:
    """A value as every --json output writes it: amounts and Tokens as strings
    in plain notation (a field named for Tokens holds a whole number), times in
    the one RFC 3339 form, ids as strings (README, "JSON outputs")."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(name): jsonable(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [jsonable(item, key) for item in items]
    if value is None or isinstance(value, bool):
        return value
    tokens = "tokens" in key
    if isinstance(value, int):
        return str(value) if tokens else value
    if isinstance(value, float):
        return value  # a measurement (seconds, a rate), never money or Tokens
    if isinstance(value, Decimal):
        return f"{value.to_integral_value():f}" if tokens and value == value.to_integral_value() else f"{value:f}"
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, str):
        if _ISO_TIME.fullmatch(value):
            return timestamp(datetime.fromisoformat(value))
        if tokens and _INTEGER.fullmatch(value):
            return value.split(".")[0]
        return value
    if isinstance(value, uuid.UUID | Path | date):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"no JSON form for {type(value).__name__}")


def json(document: Any) -> str:
    """A --json document: indented, in the forms `jsonable` fixes."""
    return orjson.dumps(jsonable(document), option=orjson.OPT_INDENT_2).decode()


def money(amount: Decimal, places: int = 2) -> str:
    """Display only: rounded for reading, never for arithmetic."""
    return f"{round_to_minor(amount, places):,.{places}f}"


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


def balances_table(rows: list[Balance], currency: str, one_bu: str | None = None) -> str:
    """The table, then what the net means: for one business unit, what it owes or
    is owed across its accounts; for all, the check that net positions sum to zero."""
    rendered = table(
        ("business unit", "name", f"spend {currency}", f"revenue {currency}", f"net {currency}", "Tokens consumed", "Tokens served"),
        [(row.bu, row.display_name, money(row.spend), money(row.revenue), money(row.net),
          f"{row.tokens_consumed:,}", f"{row.tokens_served:,}") for row in rows],
        right={2, 3, 4, 5, 6},
    )
    total_net = sum((row.net for row in rows), Decimal(0))
    if one_bu is not None:
        return f"{rendered}\n{net_meaning(one_bu, total_net, currency)}"
    return f"{rendered}\nnet positions sum to {total_net:f} (zero in a balanced ledger)"


def net_meaning(bu: str, net: Decimal, currency: str) -> str:
    """One business unit's net position (revenue - spend) in words."""
    if net < 0:
        return f"net: {bu} owes {-net:f} {currency} across its accounts (its spend exceeds its revenue)"
    if net > 0:
        return f"net: {bu} is owed {net:f} {currency} across its accounts (its revenue exceeds its spend)"
    return f"net: {bu} owes nothing and is owed nothing (its revenue equals its spend)"


def balances_document(rows: list[Balance]) -> list[dict[str, Any]]:
    return [{"bu": row.bu, "display_name": row.display_name, "spend": row.spend, "revenue": row.revenue, "net": row.net,
             "tokens_consumed": row.tokens_consumed, "tokens_served": row.tokens_served} for row in rows]


def invoice_list(invoices: list[InvoiceIssued], zone: str) -> str:
    return table(
        ("payer", "period", "from", "to", "number", "status", "lines", f"total {invoices[0].currency if invoices else ''}".strip()),
        [(invoice.payer_bu, invoice.period, local(invoice.period_start, zone), local(invoice.period_end, zone),
          str(invoice.number), invoice.status, str(len(invoice.lines)), f"{invoice.total:,.2f}") for invoice in invoices],
        right={4, 6, 7},
    )


def line_source(invoice: InvoiceIssued, line: InvoiceLine, books: BookIndex) -> PriceSource | None:
    """Which book version (and context tier) priced an invoice line."""
    if line.kind == "period_tier":
        book = books.in_force(line.model, invoice.period_end - timedelta(microseconds=1))
        return PriceSource(book.book_id, book.version, None) if book else None
    if line.token_class is None or line.unit_price_per_million is None:
        return None
    return price_source(books, model=line.model, token_class=line.token_class, unit_price=line.unit_price_per_million,
                        payer_bu=invoice.payer_bu, before=invoice.period_end)


def _source_label(invoice: InvoiceIssued, line: InvoiceLine, books: BookIndex) -> str:
    source = line_source(invoice, line, books)
    if source is None:
        return "-"
    return f"{source.book_id} v{source.version}, period tiers" if line.kind == "period_tier" else source.label()


OVERAGE_MARK = "over quota"
"""How a line of usage posted while the payer's quota was exhausted is marked."""


def line_kind_label(line: InvoiceLine) -> str:
    return f"{line.kind}, {OVERAGE_MARK}" if line.overage else line.kind


def overage_of(invoice: InvoiceIssued) -> Decimal:
    """Of an invoice's lines, the sum posted over quota: already in the total, never charged twice."""
    return sum((line.amount for line in invoice.lines if line.overage), Decimal(0))


def invoice_text(invoice: InvoiceIssued, zone: str, books: BookIndex) -> str:
    header = (f"INVOICE {invoice.payer_bu}-{invoice.number:04d}  [{invoice.status}]\n"
              f"payer {invoice.payer_bu}   period {invoice.period}: "
              f"{period_range(invoice.period_start, invoice.period_end, zone)}, end exclusive")
    lines = table(
        ("kind", "period", "provider", "consumer", "model", "class", "priced by", "Tokens", "per million", "amount"),
        [(line_kind_label(line), line.period, line.provider_bu, line.consumer_bu, line.model, line.token_class or "",
          _source_label(invoice, line, books), f"{line.tokens:,}",
          f"{line.unit_price_per_million:f}".rstrip("0").rstrip(".") if line.unit_price_per_million is not None else "",
          f"{line.amount:,.6f}") for line in invoice.lines],
        right={7, 8, 9},
    )
    subtotals = "\n".join(f"  subtotal {consumer:<28} {amount:>18,.6f}" for consumer, amount in invoice.consumer_subtotals.items())
    heads = ", ".join(f"{head.chain}#{head.sequence} {head.entry_hash[:16]}" for head in invoice.chain_heads)
    overage = overage_of(invoice)
    over = (f"  {'of which ' + OVERAGE_MARK + ' (in the sum)':<37} {overage:>18,.12f}\n"
            if any(line.overage for line in invoice.lines) else "")
    footer = (f"  {'lines sum (exact)':<37} {invoice.subtotal:>18,.12f}\n{over}"
              f"  {'rounding (' + invoice.rounding_mode + ')':<37} {invoice.rounding:>18,.12f}\n"
              f"  {'TOTAL ' + invoice.currency:<37} {invoice.total:>18,.2f}\n"
              f"  ledger chain heads: {heads}")
    return f"{header}\n{lines}\n{subtotals}\n{footer}"


def invoices_document(invoices: list[InvoiceIssued], books: BookIndex) -> list[dict[str, Any]]:
    """Each invoice as published, each line with the book version and tier that priced it."""
    documents = []
    for invoice in invoices:
        document = invoice.model_dump()
        for line, shown in zip(invoice.lines, document["lines"], strict=True):
            source = line_source(invoice, line, books)
            shown["price_source"] = None if source is None else dataclasses.asdict(source)
        documents.append(document)
    return documents


INVOICE_CSV_COLUMNS = ("invoice", "payer", "period", "status", "kind", "line_period", "provider", "consumer", "model",
                       "token_class", "book_id", "book_version", "context_tier", "tokens", "unit_price_per_million", "overage",
                       "amount")


def invoice_csv(invoices: list[InvoiceIssued], books: BookIndex) -> str:
    """One row per line, exact amounts; then a total row per invoice, rounded once."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INVOICE_CSV_COLUMNS)
    for invoice in invoices:
        number = f"{invoice.payer_bu}-{invoice.number:04d}"
        for line in invoice.lines:
            source = line_source(invoice, line, books)
            writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, line.kind, line.period,
                             line.provider_bu, line.consumer_bu, line.model, line.token_class or "",
                             source.book_id if source else "", source.version if source else "",
                             (source.context_tier or "") if source else "", line.tokens,
                             f"{line.unit_price_per_million:f}" if line.unit_price_per_million is not None else "",
                             "true" if line.overage else "", f"{line.amount:f}"))
        blank = ("",) * 11
        writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, "rounding", *blank[:-1], f"{invoice.rounding:f}"))
        writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, "total", *blank[:-1], f"{invoice.total:f}"))
    return buffer.getvalue().rstrip("\n")


def invoice_html(invoices: list[InvoiceIssued], zone: str, books: BookIndex, names: dict[str, str] | None = None) -> str:
    """A printable page a finance person can read: header, lines by consumer, subtotals, the one rounding, total."""
    names = names or {}

    def name(bu: str) -> str:
        return escape(f"{names.get(bu, bu)} ({bu})" if bu in names else bu)

    pages = []
    for invoice in invoices:
        rows = "".join(
            f"<tr{' class=overage' if line.overage else ''}><td>{escape(line_kind_label(line))}</td><td>{escape(line.period)}</td><td>{name(line.provider_bu)}</td>"
            f"<td>{name(line.consumer_bu)}</td><td>{escape(line.model)}</td><td>{escape(line.token_class or '')}</td>"
            f"<td>{escape(_source_label(invoice, line, books))}</td>"
            f"<td class=n>{line.tokens:,}</td><td class=n>{'' if line.unit_price_per_million is None else escape(f'{line.unit_price_per_million.normalize():f}')}</td>"
            f"<td class=n>{line.amount:,.6f}</td></tr>"
            for line in invoice.lines)
        subtotals = "".join(f"<tr><td colspan=9>Subtotal {name(consumer)}</td><td class=n>{amount:,.6f}</td></tr>"
                            for consumer, amount in invoice.consumer_subtotals.items())
        heads = "<br>".join(escape(f"{head.chain} #{head.sequence} {head.entry_hash}") for head in invoice.chain_heads)
        overage_row = (f"<tr class=overage><td colspan=9>Of which {OVERAGE_MARK} (in the lines above, not charged again)"
                       f"</td><td class=n>{overage_of(invoice):,.12f}</td></tr>"
                       if any(line.overage for line in invoice.lines) else "")
        pages.append(f"""<section class=invoice>
<h1>Invoice {escape(invoice.payer_bu)}-{invoice.number:04d} <small>{escape(invoice.status)}</small></h1>
<p>Payer: <b>{name(invoice.payer_bu)}</b><br>Period {escape(invoice.period)}:
{escape(period_range(invoice.period_start, invoice.period_end, zone))} (end exclusive)<br>Currency {escape(invoice.currency)}; amounts per line exact to
six places here and twelve in the data; rounded once, {escape(invoice.rounding_mode.replace('_', '-'))}, on the total.</p>
<table><thead><tr><th>Kind</th><th>Period</th><th>Provider</th><th>Consumer</th><th>Model</th><th>Class</th>
<th>Priced by</th><th>Tokens</th><th>Per million</th><th>Amount</th></tr></thead><tbody>{rows}</tbody>
<tfoot>{subtotals}<tr><td colspan=9>Lines (exact)</td><td class=n>{invoice.subtotal:,.12f}</td></tr>{overage_row}
<tr><td colspan=9>Rounding</td><td class=n>{invoice.rounding:,.12f}</td></tr>
<tr class=total><td colspan=9>Total {escape(invoice.currency)}</td><td class=n>{invoice.total:,.2f}</td></tr></tfoot></table>
<p class=heads>Ledger chain heads covered:<br>{heads}</p></section>""")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%;"
             "font-size:13px}th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left}.n{text-align:right;"
             "font-variant-numeric:tabular-nums}tfoot td{font-weight:600}.total td{font-size:15px;border-top:2px solid #222}"
             ".overage td{background:#fff3e0}small{color:#777;font-weight:normal}.heads{font-family:monospace;font-size:11px;color:#555}"
             "section{page-break-after:always}@media print{body{margin:0}}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Token Hub invoices</title>"
            f"<style>{style}</style></head><body>{''.join(pages)}</body></html>")
