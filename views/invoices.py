"""Invoices as people and finance tools read them: a list, the full text, the
JSON documents, CSV and a printable HTML page (the CLI's `invoice show --format`
and the API's `/v1/invoices/{id}?format=` give the same bytes); the month's
settlement, month-to-date spend and plans of period tiers."""

from __future__ import annotations

import csv
import dataclasses
import io
from decimal import Decimal
from html import escape
from typing import Any

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine
from tokenhub.contracts.periods import Period
from tokenhub.contracts.pricebook import BookIndex, line_source
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.services.invoicing.domain import Plan
from tokenhub.services.invoicing.queries import Spend
from tokenhub.views.text import local, money, period_range, table


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
        blank = ("",) * (len(INVOICE_CSV_COLUMNS) - 6)  # every column between the kind and the amount
        writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, "rounding", *blank, f"{invoice.rounding:f}"))
        writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, "total", *blank, f"{invoice.total:f}"))
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


def plans(rows: list[dict[str, Any]]) -> str:
    return table(["payer", "model", "book", "provider", "from", "to", "by", "reason"],
                 [[row["payer_bu"], row["model"], row["book_id"], row["provider_bu"], row["first_month"],
                   row["last_month"] or "-", row["ended_by"] or row["actor"], row["end_reason"] or row["reason"]]
                  for row in rows], right=set())


def spend_text(bu: str, month: Period, found: Spend, currency: str, zone: str) -> str:
    """Month to date: the total, what of it was over quota, the table, the period tiers reached."""
    lines = [f"{bu}: month to date {month.name} ({period_range(month.start, month.end, zone)}), {found.total:,.6f} {currency}"]
    if found.overage:
        lines.append(f"over quota: {found.overage:,.6f} {currency} of it was posted while the quota was exhausted "
                     "(billed all the same, part of the total)")
    lines.append(table(["consumer", "app", "model", "class", "Tokens", "amount", "overage"],
                       [[row["consumer_bu"], row["app"], row["model"], row["token_class"], f"{row['tokens']:,}",
                         f"{row['amount']:,.6f}", f"{row['overage']:,.6f}" if row["overage"] else "-"] for row in found.rows],
                       right={4, 5, 6}))
    lines += [f"period tier so far: {line.model} at {line.tokens:,} Tokens -> {line.amount:,.6f} {currency}"
              for line in found.period_tiers]
    return "\n".join(lines)


def spend_document(bu: str, month: Period, found: Spend) -> dict[str, Any]:
    return {
        "bu": bu, "period": month.name, "period_start": month.start, "period_end": month.end,
        "spend": found.total, "overage": found.overage, "lines": found.rows,
        "period_tiers": [{"model": line.model, "tokens": line.tokens, "charge": line.amount} for line in found.period_tiers],
    }


def closed(period: Period, issued: int, published: int, zone: str) -> str:
    return (f"closed {period.name} ({period_range(period.start, period.end, zone)}): "
            f"{issued} invoices issued, {published} events published")


def plan_assigned(plan: Plan) -> str:
    return (f"{plan.payer_bu} is on {plan.book_id}'s period tiers for {plan.model} from {plan.first_month} "
            f"to {plan.last_month or 'further notice'}: every billing period in those months gets its tier "
            "line at close, the first tier's flat fee included, with or without usage")


def plan_ended(plan: Plan) -> str:
    return f"{plan.payer_bu}'s plan for {plan.model} ends with {plan.last_month}"


def cycle_set(bu: str, every: str) -> str:
    return f"{bu} is billed every {every} from now on (periods nest in months)"
