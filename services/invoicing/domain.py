"""Invoicing's functional core: postings in, an invoice out, rounded once;
period tier lines from period totals; a month's flows netted into a settlement.
No I/O, clock or logging here: the shell passes times and stored state."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from tokenhub.contracts.events import (
    ChainHeadRef,
    InvoiceIssued,
    InvoiceLine,
    LedgerPosted,
    Priced,
    PricedLine,
    PriceBookPublished,
)
from tokenhub.contracts.ids import derive_id, posted_id
from tokenhub.contracts.money import DEFAULT_ROUNDING, RoundingMode, round_to_minor
from tokenhub.contracts.periods import Period, PeriodKind, billing_period
from tokenhub.contracts.pricebook import BookIndex, period_tier_charge
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.services.invoicing import netting

SETTLEMENT_ROUNDING: Final[RoundingMode] = DEFAULT_ROUNDING
"""Settlement's; an invoice rounds as its price books say (`rounding_mode_for`)."""

DEFAULT_CYCLE: Final[PeriodKind] = "month"
ONE_MICROSECOND: Final = timedelta(microseconds=1)


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


def rounding_mode_for(postings: Sequence[tuple[str, LedgerPosted]], books: Iterable[PriceBookPublished]) -> RoundingMode:
    """Half-even unless the price books the postings were priced with say otherwise
    (docs/architecture.md decision 5). An invoice is rounded once, in one mode: when its books
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
    rounding_mode: RoundingMode,
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


def billing_periods(events: Sequence[LedgerPosted], cycles: Mapping[str, PeriodKind], zone: str) -> list[Period]:
    """Each posting's billing period, by its payer's cycle (month unless set)."""
    return [billing_period(event.event_time, cycles.get(event.payer_bu, DEFAULT_CYCLE), zone) for event in events]


def period_tier_lines(period: Period, payer_bu: str, postings: Sequence[tuple[str, LedgerPosted]],
                      books: BookIndex) -> list[InvoiceLine]:
    """A line per model with period tiers in the book in force at the period's
    last instant, from the payer's period total of that model's Tokens."""
    totals: dict[tuple[str, str], int] = {}
    for posting_period, posted in postings:
        if posting_period == period.name and posted.kind != "adjustment":
            key = (posted.model, posted.provider_bu)
            totals[key] = totals.get(key, 0) + posted.tokens
    last_instant = period.end - ONE_MICROSECOND
    lines = []
    for (model, provider), total in sorted(totals.items()):
        book = books.in_force(model, last_instant)
        schedule = book.price_for(model).period_tiers if book else None  # type: ignore[union-attr]
        if schedule is None:
            continue
        lines.append(InvoiceLine(kind="period_tier", period=period.name, provider_bu=provider, consumer_bu=payer_bu,
                                 model=model, tokens=total, amount=period_tier_charge(total, schedule)))
    return lines


def tier_adjustment(invoice: InvoiceIssued, line: InvoiceLine, currency: str) -> Priced:
    """The period tier line as a Priced adjustment, so the ledger posts it."""
    adjustment_id = derive_id("period_tier", str(invoice.invoice_id), line.model)
    return Priced(
        id=adjustment_id, event_time=invoice.period_end - ONE_MICROSECOND,
        cause_id=str(invoice.invoice_id), kind="adjustment", consumed_id=adjustment_id,
        payer_bu=invoice.payer_bu, consumer_bu=invoice.payer_bu, provider_bu=line.provider_bu, model=line.model,
        book_id="period-tiers", book_version=1, currency=currency,
        lines=(PricedLine(token_class="period_tier", tokens=0, unit_price_per_million=Decimal(0), amount=line.amount),),
        total_tokens=0, total_amount=line.amount, invoice_id=invoice.invoice_id,
    )


def issue_invoice(payer_bu: str, period: Period, postings: Sequence[tuple[str, LedgerPosted]], books: BookIndex, *,
                  number: int, currency: str, minor_units: int, status: str,
                  issued_at: datetime | None) -> InvoiceIssued:
    """The payer's invoice for `period` from the postings assigned to it, with
    the period's tier lines, rounded once in the mode its price books name."""
    return build_invoice(
        payer_bu, period, postings, number=number, currency=currency, minor_units=minor_units,
        rounding_mode=rounding_mode_for(postings, books.versions), status=status, issued_at=issued_at,
        extra_lines=period_tier_lines(period, payer_bu, postings, books),
    )


def tier_adjustments(invoice: InvoiceIssued, currency: str) -> list[Priced]:
    """The invoice's period tier lines, each a Priced adjustment for the ledger."""
    return [tier_adjustment(invoice, line, currency) for line in invoice.lines if line.kind == "period_tier"]


def reversed_posting_ids(postings: Sequence[tuple[str, LedgerPosted]]) -> list[uuid.UUID]:
    """The postings that reversals among `postings` reverse. A posting's id is its
    LedgerPosted's, derived from the Priced's id (`posted_id`), so the charges are
    found by key."""
    return [posted_id(posted.corrects_id) for _, posted in postings
            if posted.kind == "reversal" and posted.corrects_id]


def draft_postings(open_postings: Sequence[tuple[str, datetime, LedgerPosted]], invoiced: set[str],
                   period: Period) -> tuple[int, list[tuple[str, LedgerPosted]]]:
    """What the payer's draft for `period` would carry if every open period closed
    now, and its place among the drafts: each open period gets its own invoice,
    numbered in period order, and postings of periods already invoiced (late
    usage, credits) go on the last one. `open_postings` are (period, period end,
    posting) of the payer's open postings; `invoiced` the periods it has invoices for."""
    open_periods = sorted({(end, name) for name, end, _ in open_postings if name not in invoiced})
    names = [name for _, name in open_periods]
    last = names[-1] if names else period.name
    carried = [(name, posted) for name, _, posted in open_postings
               if name == period.name or (name in invoiced and period.name == last)]
    return (names.index(period.name) if period.name in names else 0), carried


def build_settlement(period: Period, postings: Sequence[LedgerPosted],
                     period_tiers: Sequence[tuple[str, InvoiceLine]] = (), *, currency: str,
                     minor_units: int) -> SettlementNetted:
    """The month's net positions and the transfers that clear them, from what its
    invoices carry: their postings and their period tier lines, as (payer, line)."""
    matrix = netting.gross_flows(postings, period_tiers)
    positions = netting.positions_from_matrix(matrix)
    rounded, absorber = netting.round_positions(positions, minor_units, SETTLEMENT_ROUNDING)
    return SettlementNetted(
        id=derive_id("settlement", period.name),
        event_time=period.end,
        cause_id=f"settlement:{period.name}",
        period=period.name,
        currency=currency,
        matrix=matrix,
        positions=positions,
        rounded_positions=rounded,
        rounding_residue_bu=absorber,
        transfers=netting.transfers(rounded),
    )
