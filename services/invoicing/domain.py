"""Invoicing's functional core: postings in, an invoice out, rounded once."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from tokenhub.contracts.events import ChainHeadRef, InvoiceIssued, InvoiceLine, LedgerPosted, PriceBookPublished
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.money import DEFAULT_ROUNDING, round_to_minor
from tokenhub.contracts.periods import Period


def invoice_id_for(payer_bu: str, period: str) -> uuid.UUID:
    return derive_id("invoice", payer_bu, period)


def invoice_lines(postings: Sequence[tuple[str, LedgerPosted]], period: str) -> list[InvoiceLine]:
    """Group priced lines by provider x consumer x model x class x unit price;
    postings of an earlier period become adjustment lines naming it."""
    grouped: dict[tuple, tuple[int, Decimal]] = defaultdict(lambda: (0, Decimal(0)))
    for posting_period, posted in postings:
        if posted.kind == "reversal":
            kind = "credit"
        else:
            kind = "usage" if posting_period == period else "adjustment"
        for line in posted.lines:
            key = (kind, posting_period, posted.provider_bu, posted.consumer_bu, posted.model, line.token_class,
                   line.unit_price_per_million)
            tokens, amount = grouped[key]
            grouped[key] = (tokens + line.tokens, amount + line.amount)
    return [
        InvoiceLine(kind=kind, period=line_period, provider_bu=provider, consumer_bu=consumer, model=model,
                    token_class=token_class, tokens=tokens, unit_price_per_million=unit_price, amount=amount)
        for (kind, line_period, provider, consumer, model, token_class, unit_price), (tokens, amount) in sorted(
            grouped.items(), key=lambda item: tuple(str(part) for part in item[0]))
    ]


def rounding_mode_for(postings: Sequence[tuple[str, LedgerPosted]], books: Iterable[PriceBookPublished]) -> str:
    """Half-even unless the price books the postings were priced with say otherwise
    (DESIGN.md decision 5). An invoice is rounded once, in one mode: when its books
    disagree, the default applies and the invoice names the mode it used."""
    modes_by_version = {(book.book_id, book.version): book.rounding for book in books}
    modes = {modes_by_version[(posted.book_id, posted.book_version)] for _, posted in postings
             if (posted.book_id, posted.book_version) in modes_by_version}
    return modes.pop() if len(modes) == 1 else DEFAULT_ROUNDING


def chain_heads(postings: Sequence[tuple[str, LedgerPosted]]) -> tuple[ChainHeadRef, ...]:
    heads: dict[str, LedgerPosted] = {}
    for _, posted in postings:
        if posted.chain not in heads or posted.sequence > heads[posted.chain].sequence:
            heads[posted.chain] = posted
    return tuple(ChainHeadRef(chain=head.chain, sequence=head.sequence, entry_hash=head.entry_hash)
                 for head in sorted(heads.values(), key=lambda posted: posted.chain))


def build_invoice(
    payer_bu: str,
    period: Period,
    postings: Sequence[tuple[str, LedgerPosted]],
    *,
    number: int,
    currency: str,
    minor_units: int,
    rounding_mode: str,
    status: str,
    issued_at: datetime | None,
    extra_lines: Sequence[InvoiceLine] = (),
) -> InvoiceIssued:
    """The invoice of one payer for one period. The total is the exact sum of the
    postings assigned to it, rounded once; the rounding is its own figure."""
    lines = invoice_lines(postings, period.name) + list(extra_lines)
    subtotal = sum((line.amount for line in lines), Decimal(0))
    total = round_to_minor(subtotal, minor_units, rounding_mode)
    consumer_subtotals: dict[str, Decimal] = defaultdict(Decimal)
    for line in lines:
        consumer_subtotals[line.consumer_bu] += line.amount
    invoice_id = invoice_id_for(payer_bu, period.name)
    return InvoiceIssued(
        id=derive_id("invoice.issued", str(invoice_id)),
        event_time=period.end,
        cause_id=f"{payer_bu}:{period.name}",
        invoice_id=invoice_id,
        number=number,
        payer_bu=payer_bu,
        period=period.name,
        period_start=period.start,
        period_end=period.end,
        status=status,  # type: ignore[arg-type]
        currency=currency,
        lines=tuple(lines),
        consumer_subtotals=dict(sorted(consumer_subtotals.items())),
        subtotal=subtotal,
        rounding=total - subtotal,
        total=total,
        rounding_mode=rounding_mode,
        postings_count=len(postings),
        chain_heads=chain_heads(postings),
        issued_at=issued_at,
    )
