"""Invoices as CSV and printable HTML for the API: the same columns and page
as `tokenhub invoice show --format csv|html`, so a finance tool can take either."""

from __future__ import annotations

from tokenhub.contracts.events import InvoiceIssued

INVOICE_CSV_COLUMNS = ("invoice", "payer", "period", "status", "kind", "line_period", "provider", "consumer", "model",
                       "token_class", "tokens", "unit_price_per_million", "amount")


def invoice_csv(invoices: list[InvoiceIssued]) -> str:
    """One row per line, exact amounts; then a total row per invoice, rounded once."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INVOICE_CSV_COLUMNS)
    for invoice in invoices:
        number = f"{invoice.payer_bu}-{invoice.number:04d}"
        for line in invoice.lines:
            writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, line.kind, line.period,
                             line.provider_bu, line.consumer_bu, line.model, line.token_class or "", line.tokens,
                             f"{line.unit_price_per_million:f}" if line.unit_price_per_million is not None else "",
                             f"{line.amount:f}"))
        writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, "rounding", "", "", "", "", "", "", "",
                         f"{invoice.rounding:f}"))
        writer.writerow((number, invoice.payer_bu, invoice.period, invoice.status, "total", "", "", "", "", "", "", "",
                         f"{invoice.total:f}"))
    return buffer.getvalue().rstrip("\n")


def invoice_html(invoices: list[InvoiceIssued], names: dict[str, str] | None = None) -> str:
    """A printable page a finance person can read: header, lines by consumer, subtotals, the one rounding, total."""
    from html import escape

    names = names or {}

    def name(bu: str) -> str:
        return escape(f"{names.get(bu, bu)} ({bu})" if bu in names else bu)

    pages = []
    for invoice in invoices:
        rows = "".join(
            f"<tr><td>{escape(line.kind)}</td><td>{escape(line.period)}</td><td>{name(line.provider_bu)}</td>"
            f"<td>{name(line.consumer_bu)}</td><td>{escape(line.model)}</td><td>{escape(line.token_class or '')}</td>"
            f"<td class=n>{line.tokens:,}</td><td class=n>{'' if line.unit_price_per_million is None else escape(f'{line.unit_price_per_million.normalize():f}')}</td>"
            f"<td class=n>{line.amount:,.6f}</td></tr>"
            for line in invoice.lines)
        subtotals = "".join(f"<tr><td colspan=8>Subtotal {name(consumer)}</td><td class=n>{amount:,.6f}</td></tr>"
                            for consumer, amount in invoice.consumer_subtotals.items())
        heads = "<br>".join(escape(f"{head.chain} #{head.sequence} {head.entry_hash}") for head in invoice.chain_heads)
        pages.append(f"""<section class=invoice>
<h1>Invoice {escape(invoice.payer_bu)}-{invoice.number:04d} <small>{escape(invoice.status)}</small></h1>
<p>Payer: <b>{name(invoice.payer_bu)}</b><br>Period {escape(invoice.period)}: {invoice.period_start.isoformat()} to
{invoice.period_end.isoformat()} (end exclusive)<br>Currency {escape(invoice.currency)}; amounts per line exact to
six places here and twelve in the data; rounded once, {escape(invoice.rounding_mode.replace('_', '-'))}, on the total.</p>
<table><thead><tr><th>Kind</th><th>Period</th><th>Provider</th><th>Consumer</th><th>Model</th><th>Class</th>
<th>Tokens</th><th>Per million</th><th>Amount</th></tr></thead><tbody>{rows}</tbody>
<tfoot>{subtotals}<tr><td colspan=8>Lines (exact)</td><td class=n>{invoice.subtotal:,.12f}</td></tr>
<tr><td colspan=8>Rounding</td><td class=n>{invoice.rounding:,.12f}</td></tr>
<tr class=total><td colspan=8>Total {escape(invoice.currency)}</td><td class=n>{invoice.total:,.2f}</td></tr></tfoot></table>
<p class=heads>Ledger chain heads covered:<br>{heads}</p></section>""")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;width:100%;"
             "font-size:13px}th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left}.n{text-align:right;"
             "font-variant-numeric:tabular-nums}tfoot td{font-weight:600}.total td{font-size:15px;border-top:2px solid #222}"
             "small{color:#777;font-weight:normal}.heads{font-family:monospace;font-size:11px;color:#555}"
             "section{page-break-after:always}@media print{body{margin:0}}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Token Hub invoices</title>"
            f"<style>{style}</style></head><body>{''.join(pages)}</body></html>")
