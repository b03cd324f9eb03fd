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
from datetime import UTC, date, datetime
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

import orjson
from pydantic import BaseModel

from tokenhub.audit.replay import ReplayReport
from tokenhub.audit.statement import Statement
from tokenhub.audit.verify import VIOLATIONS_SHOWN_MAX, VerifyReport
from tokenhub.bench.demo import DemoResult

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine, ModelPrice, PriceBookPublished
from tokenhub.contracts.pricebook import BookIndex, line_source
from tokenhub.contracts.money import round_to_minor
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.infra.status import StackStatus
from tokenhub.infra.supervisor import AlreadyRunning
from tokenhub.services.ledger.queries import Balance, BudgetStatus
from tokenhub.services.metering.queries import ConversionTableRow, Rejection, RejectedStats, Verdict
from tokenhub.services.metering.tools import EmitReport

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


def show(rows: list[dict[str, Any]], columns: list[str], output: str, zone: str, empty: str) -> None:
    """Rows as JSON, or these columns of them as a table, or `empty` when there are none."""
    if output == "json":
        print(json(rows))
    elif not rows:
        print(empty)
    else:
        print(table(columns, [[cell(row[column], zone) for column in columns] for row in rows], right=set()))


def emit_text(report: EmitReport) -> str:
    head = f"sent {report.sent} usage events to usage.reported"
    if report.accepted is None:
        return f"{head}; not waiting for metering's answer (--wait 0): `tokenhub rejected list` shows what it refused"
    by_reason = ", ".join(f"{reason} {count}" for reason, count in (report.rejected_by_reason or {}).items())
    text = (f"{head}; metering accepted {report.accepted}, found {report.duplicates} duplicates, "
            f"rejected {report.rejected}" + (f" ({by_reason})" if by_reason else ""))
    if report.unanswered:
        text += (f"; {report.unanswered} not answered within {report.waited_s:g} s "
                 "(is metering running? `tokenhub status`)")
    return text


def resubmitted(verdict: Verdict, wait_s: float) -> str:
    """What metering made of a resubmitted event."""
    if wait_s <= 0:
        return "not waiting for metering's answer (--wait 0)"
    if verdict is None:
        return f"metering has not answered within {wait_s:g} s (is metering running? `tokenhub status`)"
    if isinstance(verdict, Rejection):
        return f"rejected again: {verdict.reason_code}: {verdict.message}"
    if verdict == "duplicate":
        return "a duplicate: metering had already accepted this event, so it counts once"
    return "accepted: metered and on its way to pricing"


def conversion_tables(rows: list[ConversionTableRow], zone: str) -> str:
    return "\n".join(f"version {row['version']} effective {local(row['effective_from'], zone)} ({row['actor']}: {row['reason']})\n"
                     + table(["unit", "class", "Tokens per unit"],
                             [[rule["unit"], rule["token_class"], rule["tokens_per_unit"]] for rule in row["rules"]], right={2})
                     for row in rows)


def rejected_stats(stats: RejectedStats) -> str:
    sources = [[source, str(count)] for source, count in stats.by_source.items()]
    if stats.others:
        sources.append(["(other sources)", str(stats.others)])
    return (table(["reason", "rejected"], [[reason, str(count)] for reason, count in stats.by_reason.items()], right={1})
            + "\n\n" + table(["source", "rejected"], sources, right={1}) + f"\n\n{stats.total} rejected in all")


def prices(found: list[tuple[PriceBookPublished, ModelPrice]], zone: str) -> str:
    """The prices in force for each model: base and context tiers per class, adjustments, period tiers."""
    lines = []
    for book, price in found:
        lines.append(f"{price.model}: book {book.book_id} v{book.version}, effective {local(book.effective_from, zone)}, "
                     f"{book.currency} per million Tokens" + (f" ({price.note})" if price.note else ""))
        rows = [["base", name, f"{amount:f}".rstrip("0").rstrip(".")] for name, amount in price.unit_prices_per_million.items()]
        rows += [[f"{tier.name} (input > {tier.above_input_tokens:,})", name, f"{amount:f}".rstrip("0").rstrip(".")]
                 for tier in price.context_tiers for name, amount in tier.unit_prices_per_million.items()]
        lines.append(table(["tier", "class", "price"], rows, right={2}))
        lines += [f"  {adjustment.bu} pays x{adjustment.factor}" for adjustment in price.bu_adjustments]
        if price.period_tiers:
            lines.append(f"  period tiers ({price.period_tiers.mode}): " + ", ".join(
                f"up to {tier.up_to_tokens or 'more'}: {tier.unit_price_per_million}/M + {tier.flat_fee}"
                for tier in price.period_tiers.tiers))
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


def budget_document(status: BudgetStatus) -> dict[str, Any]:
    budget = status.budget
    return {
        "payer_bu": budget.payer_bu, "consumer_bu": status.consumer_bu, "period": status.month,
        "budget_id": budget.id, "amount": budget.amount, "currency": budget.currency,
        "thresholds_percent": list(budget.thresholds_percent), "hard_limit": budget.hard_limit,
        "spent": status.spent, "used_percent": status.used_percent,
        "thresholds_crossed": [threshold.normalize() for threshold in status.thresholds_crossed],
        "quota_exhausted": status.quota_exhausted,
        "actor": budget.actor, "reason": budget.reason, "set_at": budget.set_at, "period_from": budget.period_from,
    }


def budgets_table(rows: list[dict[str, Any]], currency: str) -> str:
    return table(
        ("payer", "consumer", "month", f"budget {currency}", "spent", "used %", "thresholds crossed", "hard limit",
         "quota", "set by", "reason"),
        [(row["payer_bu"], row["consumer_bu"] or "(all)", row["period"], f"{row['amount']:f}", f"{row['spent']:f}",
          f"{row['used_percent']:f}", ", ".join(f"{value:f}" for value in row["thresholds_crossed"]) or "-",
          "-" if row["hard_limit"] is None else f"{row['hard_limit']:f}",
          "EXHAUSTED" if row["quota_exhausted"] else "available", row["actor"], row["reason"]) for row in rows],
        right={3, 4, 5},
    )


def plans(rows: list[dict[str, Any]]) -> str:
    return table(["payer", "model", "book", "provider", "from", "to", "by", "reason"],
                 [[row["payer_bu"], row["model"], row["book_id"], row["provider_bu"], row["first_month"],
                   row["last_month"] or "-", row["ended_by"] or row["actor"], row["end_reason"] or row["reason"]]
                  for row in rows], right=set())


def invoice_list(invoices: list[InvoiceIssued], zone: str) -> str:
    return table(
        ("payer", "period", "from", "to", "number", "status", "lines", f"total {invoices[0].currency if invoices else ''}".strip()),
        [(invoice.payer_bu, invoice.period, local(invoice.period_start, zone), local(invoice.period_end, zone),
          str(invoice.number), invoice.status, str(len(invoice.lines)), f"{invoice.total:,.2f}") for invoice in invoices],
        right={4, 6, 7},
    )


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


# --- the auditor's reports, the settlement, the stack, the benchmark and the demo -------------------

def replay(report: ReplayReport) -> str:
    where = "tokens.priced" if report.source == "topic" else "the ledger's Priced archive"
    when = f" as of {report.as_of.isoformat()}" if report.as_of else ""  # as given, in the zone the auditor named
    lines = []
    if not report.differences:
        lines.append(f"replay OK: {report.events} Priced events from {where}{when} rebuilt "
                     f"{len(report.rebuilt) if report.bu is None else 1} business units; every balance equals the ledger's projection")
    else:
        lines.append(f"replay FAILED: {len(report.differences)} differences ({report.events} events read from {where}{when})")
        lines += [f"  {difference.bu} {difference.figure}: rebuilt {difference.rebuilt:f} != projected "
                  f"{difference.projected:f}  [{difference.row(report.as_of)}]" for difference in report.differences]
    if report.conflicts:
        lines.append(f"  note: {report.conflicts} later copies on the topic reused an id with other content; the first was kept")
    if report.repricing is not None:
        repricing = report.repricing
        if report.ok or not (repricing.mismatches or repricing.unrecomputable or report.repriced_differences):
            lines.append(f"reprice OK: {len(repricing.amounts)} Priced recomputed from their TokenConsumed and book versions "
                         f"agree to the last digit ({repricing.kept} period tier adjustments taken as posted)")
        else:
            lines.append(f"reprice FAILED: {len(repricing.mismatches)} amounts differ, {len(repricing.unrecomputable)} "
                         f"cannot be recomputed, {len(report.repriced_differences)} balances differ")
            lines += [f"  Priced {priced_id} ({kind}): recorded {recorded:f}, recomputed {recomputed:f}"
                      for priced_id, kind, recorded, recomputed in repricing.mismatches[:VIOLATIONS_SHOWN_MAX]]
            lines += [f"  Priced {priced_id}: {why}" for priced_id, why in repricing.unrecomputable[:VIOLATIONS_SHOWN_MAX]]
            lines += [f"  {difference.bu} {difference.figure}: repriced {difference.rebuilt:f} != projected {difference.projected:f}"
                      for difference in report.repriced_differences]
    return "\n".join(lines)


def verify(report: VerifyReport) -> str:
    lines = [f"Token Hub verify{' of ' + report.scope if report.scope else ''}"]
    for check in report.checks:
        status = "SKIPPED" if check.skipped else ("ok" if check.ok else "FAILED")
        lines.append(f"  [{status:>7}] {check.name:<12} {check.title} ({check.examined} examined"
                     + (f"; {check.skipped}" if check.skipped else "") + (f"; {len(check.violations)} violations" if check.violations else "") + ")")
        for violation in check.violations[:VIOLATIONS_SHOWN_MAX]:
            lines.append(f"      {violation.subject}: {violation.detail}")
        if len(check.violations) > VIOLATIONS_SHOWN_MAX:
            lines.append(f"      ... and {len(check.violations) - VIOLATIONS_SHOWN_MAX} more (--json lists all)")
    violations = len(report.violations)
    lines.append("verify OK: every chain and invariant holds" if report.ok else f"verify FAILED: {violations} violations")
    return "\n".join(lines)


def statement(found: Statement, currency: str, zone: str) -> str:
    header = (f"STATEMENT {found.bu}  {period_range(found.start, found.end, zone)} (end exclusive, by {found.by})")
    rows = table(
        ("event time", "entry", "kind", "payer", "consumer", "provider", "model", f"spend {currency}", f"revenue {currency}",
         "Tokens consumed", "Tokens served"),
        [(local(line.event_time, zone, seconds=True), f"{line.chain}#{line.sequence}",
          f"{line.kind}, {OVERAGE_MARK}" if line.overage else line.kind, line.payer_bu,
          line.consumer_bu, line.provider_bu, line.model, f"{line.effect['spend']:f}", f"{line.effect['revenue']:f}",
          f"{line.effect['tokens_consumed']:,}", f"{line.effect['tokens_served']:,}") for line in found.lines],
        right={7, 8, 9, 10},
    )
    def figures(label: str, values: dict[str, Decimal]) -> str:
        return (f"  {label:<10} spend {values['spend']:f}  revenue {values['revenue']:f}  net {values['revenue'] - values['spend']:f}"
                f"  Tokens consumed {values['tokens_consumed']:,}  served {values['tokens_served']:,}")

    footer = "\n".join([figures("opening", found.opening), figures("entries", found.movements), figures("closing", found.closing),
                        "  opening + entries = closing" if found.agrees or found.truncated else "  MISMATCH: opening + entries != closing"]
                       + ([f"  {OVERAGE_MARK}: spend {found.overage:f} of the entries' spend was posted while the quota "
                           "was exhausted (billed all the same, in the figures above)"]
                          if any(line.overage for line in found.lines) else []))
    more = f"\n  (first {len(found.lines)} entries shown; narrow the window for the rest)" if found.truncated else ""
    return f"{header}\n{rows}\n{footer}{more}"


def settlement(settlement: SettlementNetted, final: bool) -> str:
    status = ("settled" if settlement.revision == 1 else f"settled, revision {settlement.revision}") if final else (
        "provisional (month not closed)")
    payers = sorted({flow.payer_bu for flow in settlement.matrix})
    providers = sorted({flow.provider_bu for flow in settlement.matrix})
    cells = {(flow.payer_bu, flow.provider_bu): flow.amount for flow in settlement.matrix}
    matrix = table(["payer \\ provider", *providers],
                   [[payer, *(money(cells[(payer, provider)]) if (payer, provider) in cells else "-" for provider in providers)]
                    for payer in payers], right=set(range(1, len(providers) + 1)))
    positions = table(["business unit", f"net position {settlement.currency}", "rounded"],
                      [[bu, f"{amount:,.6f}", money(settlement.rounded_positions[bu])] for bu, amount in sorted(settlement.positions.items())],
                      right={1, 2})
    transfers = table(["pays", "receives", f"amount {settlement.currency}"],
                      [[transfer.from_bu, transfer.to_bu, money(transfer.amount)] for transfer in settlement.transfers],
                      right={2})
    residue = (f"\nrounding residue absorbed by {settlement.rounding_residue_bu}" if settlement.rounding_residue_bu else "")
    return (f"SETTLEMENT {settlement.period} [{status}]\n\nwho owes whom before netting:\n{matrix}\n\n"
            f"net positions (revenue - spend):\n{positions}{residue}\n\n"
            f"{len(settlement.transfers)} transfers clear {len(settlement.positions)} positions:\n{transfers}")


def already_running(error: AlreadyRunning, state_dir: Path, zone: str) -> str:
    """`already running in .tokenhub (pid 4242, since 2026-03-14 10:30:00 Asia/Shanghai (+08:00))`."""
    since = local(datetime.fromisoformat(error.since), zone, seconds=True) if error.since else "unknown"
    return f"already running in {state_dir} (pid {error.pid or 'unknown'}, since {since})"


def status(report: StackStatus, zone: str) -> str:
    """The stack's processes, lag and faults; times in company time, the zone said once."""
    supervisor = report.supervisor or {}

    def shown(text: str | None) -> str:
        if not text:
            return "-"
        return f"{datetime.fromisoformat(text).astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S}"

    lines = [f"Token Hub is up in {report.state_dir} (supervisor pid {supervisor.get('pid')}, "
             f"since {shown(supervisor.get('started_at'))}); times in {zone}", "",
             f"{'process':<10} {'pid':>8}  {'state':<10} {'since':<19} {'restarts':>8}  last exit"]
    for process in report.processes:
        last = (f"{process['last_exit_code']} at {shown(process['last_exit_at'])}"
                if process.get("last_exit_code") is not None else "-")
        lines.append(f"{process['name']:<10} {process.get('pid') or '-':>8}  {process['state']:<10} "
                     f"{shown(process.get('started_at')):<19} {process['restarts']:>8}  {last}")
    lines += ["", f"{'service':<10} {'lag':>10}  {'outbox':>8}  input topics (records not handled yet)"]
    for lag in report.lags:
        topics = ", ".join(f"{topic} {count}" for topic, count in lag.by_topic.items()) or "-"
        lines.append(f"{lag.service:<10} {_figure(lag.records_behind):>10}  {_figure(lag.outbox_events):>8}  {topics}")
    if report.faults:
        lines += ["", "recent faults:"]
        for fault in report.faults[-10:]:
            resumed = (f"back after {fault['seconds_to_resume']:.1f} s" if fault.get("seconds_to_resume") is not None
                       else "not back yet")
            lines.append(f"  {shown(fault['noticed_at'])}  {fault['process']} exited with status {fault['exit_code']}; "
                         f"{resumed}: {fault['outcome']}")
    lines += [f"(unmeasured: {problem})" for problem in report.problems]
    return "\n".join(lines)


def _figure(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _section(title: str) -> str:
    return f"\n== {title} " + "=" * max(0, 70 - len(title))


def demo(result: DemoResult, zone: str, books: BookIndex) -> str:
    """The demo's figures, section by section."""
    figures = result.counters
    parts = [
        _section("pipeline"),
        f"metered {figures.get('metering.accepted', 0)} events into {figures.get('metering.consumed', 0)} "
        f"TokenConsumed (funding splits), rejected {figures.get('metering.rejected', 0)} with reasons, "
        f"priced {figures.get('pricing.priced', 0)}, posted {figures.get('ledger.posted', 0)}",
        _section("Tokens by class: text, image, video and agent usage"),
        table(["class", "models", "Tokens"], [[row.token_class, row.models, f"{row.tokens:,}"]
                                                     for row in result.tokens_by_class], right={2}),
        _section("shared costs: funding agreements applied"),
        table(["agreement", "consumer", "payer", "share %", "events", "Tokens"],
                     [[row.agreement, row.consumer_bu, row.payer_bu, row.share_percent, str(row.events), f"{row.tokens:,}"]
                      for row in result.funding_shares], right={3, 4, 5}),
        _section("balances per business unit (CNY, Tokens)"),
        balances_table(result.balances, "CNY"),
        _section(f"independent recomputation of {result.recomputed_bu}'s spend"),
        f"from the price book and the events: {result.recomputed_spend:f} CNY\n"
        f"ledger:                             {result.ledger_spend:f} CNY\n"
        f"{'MATCH' if result.recomputed_spend == result.ledger_spend else 'MISMATCH'}",
        _section(f"month end: {len(result.issued)} invoices issued for {result.month}"),
        invoice_list(result.invoices, zone),
        "",
        invoice_text(result.shown_invoice, zone, books),
        _section(f"settlement between business units for {result.month}"),
        settlement(result.settlement, result.settlement_final),
        _section("replay from tokens.priced"),
        replay(result.replay),
        _section("audit: tokenhub verify"),
        verify(result.verify),
    ]
    return "\n".join(parts)
