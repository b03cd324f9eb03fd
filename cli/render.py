"""How the CLI shows things: aligned tables for people, stable JSON for tools."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import TypeVar

import orjson

from tokenhub.cli.queries import BalanceRow, ReplayReport
from tokenhub.contracts.events import InvoiceIssued
from tokenhub.contracts.money import round_to_minor

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


def balances_table(rows: list[BalanceRow], currency: str) -> str:
    rendered = table(
        ("business unit", "name", f"spend {currency}", f"revenue {currency}", f"net {currency}", "Tokens consumed", "Tokens served"),
        [(row.bu, row.display_name, money(row.spend), money(row.revenue), money(row.net),
          f"{row.tokens_consumed:,}", f"{row.tokens_served:,}") for row in rows],
        right={2, 3, 4, 5, 6},
    )
    total_net = sum((row.net for row in rows), Decimal(0))
    return f"{rendered}\nnet positions sum to {total_net:f} (zero in a balanced ledger)"


def balances_json(rows: list[BalanceRow]) -> str:
    return orjson.dumps([
        {"bu": row.bu, "display_name": row.display_name, "spend": f"{row.spend:f}", "revenue": f"{row.revenue:f}",
         "net": f"{row.net:f}", "tokens_consumed": row.tokens_consumed, "tokens_served": row.tokens_served}
        for row in rows
    ], option=orjson.OPT_INDENT_2).decode()


def invoice_list(invoices: list[InvoiceIssued]) -> str:
    return table(
        ("payer", "period", "number", "status", "lines", f"total {invoices[0].currency if invoices else ''}".strip()),
        [(invoice.payer_bu, invoice.period, str(invoice.number), invoice.status, str(len(invoice.lines)),
          f"{invoice.total:,.2f}") for invoice in invoices],
        right={2, 4, 5},
    )


def invoice_text(invoice: InvoiceIssued) -> str:
    header = (f"INVOICE {invoice.payer_bu}-{invoice.number:04d}  [{invoice.status}]\n"
              f"payer {invoice.payer_bu}   period {invoice.period} "
              f"({invoice.period_start.isoformat()} to {invoice.period_end.isoformat()}, end exclusive)")
    lines = table(
        ("kind", "period", "provider", "consumer", "model", "class", "Tokens", "per million", "amount"),
        [(line.kind, line.period, line.provider_bu, line.consumer_bu, line.model, line.token_class or "",
          f"{line.tokens:,}", f"{line.unit_price_per_million:f}".rstrip("0").rstrip(".") if line.unit_price_per_million is not None else "",
          f"{line.amount:,.6f}") for line in invoice.lines],
        right={6, 7, 8},
    )
    subtotals = "\n".join(f"  subtotal {consumer:<28} {amount:>18,.6f}" for consumer, amount in invoice.consumer_subtotals.items())
    heads = ", ".join(f"{head.chain}#{head.sequence} {head.entry_hash[:16]}" for head in invoice.chain_heads)
    footer = (f"  {'lines sum (exact)':<37} {invoice.subtotal:>18,.12f}\n"
              f"  {'rounding (' + invoice.rounding_mode + ')':<37} {invoice.rounding:>18,.12f}\n"
              f"  {'TOTAL ' + invoice.currency:<37} {invoice.total:>18,.2f}\n"
              f"  ledger chain heads: {heads}")
    return f"{header}\n{lines}\n{subtotals}\n{footer}"


def invoices_json(invoices: list[InvoiceIssued]) -> str:
    return orjson.dumps([invoice.model_dump(mode="json") for invoice in invoices], option=orjson.OPT_INDENT_2).decode()


def replay_text(report: ReplayReport) -> str:
    if report.ok:
        return (f"replay OK: {report.events} Priced events from {TOPIC} rebuilt {len(report.rebuilt)} business units; "
                "every balance equals the ledger's projection")
    lines = [f"replay FAILED: {len(report.differences)} differences ({report.events} events read)"]
    lines += [f"  {bu} {figure}: rebuilt {rebuilt:f} != projected {projected:f}"
              for bu, figure, rebuilt, projected in report.differences]
    return "\n".join(lines)


TOPIC = "tokens.priced"


def replay_json(report: ReplayReport) -> str:
    return orjson.dumps({
        "ok": report.ok,
        "events": report.events,
        "differences": [{"bu": bu, "figure": figure, "rebuilt": f"{rebuilt:f}", "projected": f"{projected:f}"}
                        for bu, figure, rebuilt, projected in report.differences],
    }, option=orjson.OPT_INDENT_2).decode()
