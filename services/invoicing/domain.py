"""Invoicing's functional core. Postings are added into running totals per
invoice-line key; duplicates are recognised by each chain's gapless sequence;
a period's totals become an invoice, rounded once, with its period tier lines;
a month's invoiced flows are netted into a settlement. No I/O, clock or
logging here: the shell passes times and the stored state."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, Literal

from tokenhub.contracts.events import (
    ChainHeadRef,
    InvoiceIssued,
    InvoiceLine,
    LedgerPosted,
    Priced,
    PricedLine,
    PriceBookPublished,
)
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.money import DEFAULT_ROUNDING, RoundingMode, round_to_minor
from tokenhub.contracts.periods import Period, PeriodKind, billing_period
from tokenhub.contracts.pricebook import BookIndex, period_tier_charge
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.services.invoicing import netting
from tokenhub.services.invoicing.codec import Posted

SETTLEMENT_ROUNDING: Final[RoundingMode] = DEFAULT_ROUNDING
"""Settlement's; an invoice rounds as its price books say (`rounding_mode_for`)."""

DEFAULT_CYCLE: Final[PeriodKind] = "month"
ONE_MICROSECOND: Final = timedelta(microseconds=1)

Posting = LedgerPosted | Posted
"""A posting as published (the pydantic model) or as invoicing decodes it (codec.Posted)."""

TotalKind = Literal["charge", "reversal", "period_tier"]
"""What a running total adds up: charges (and corrections, which are charges at
a new price), reversals (credit lines), or period tier adjustments posted back
by the ledger, which belong to the invoice that computed them."""


# --- running totals ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LineKey:
    """What a running total is kept by: an invoice line's key (payer, period,
    provider, consumer, model, class, unit price, and whether it credits), plus
    the app (month-to-date spend shows it) and the price book version (an
    invoice rounds in the mode its books name)."""

    payer_bu: str
    period: str
    kind: TotalKind
    consumer_bu: str
    provider_bu: str
    app: str | None
    model: str
    token_class: str
    unit_price_per_million: Decimal
    book_id: str | None
    book_version: int | None


@dataclass(frozen=True, slots=True)
class LineTotal:
    key: LineKey
    period_end: datetime
    tokens: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class ChainTotal:
    """Per payer, period and chain: how many postings, and the last of them
    (the chain head an invoice prints)."""

    payer_bu: str
    period: str
    period_end: datetime
    chain: str
    postings: int
    head_sequence: int
    head_hash: str


@dataclass(frozen=True, slots=True)
class PeriodTotals:
    """Running totals of one payer's postings: what an invoice or a draft is built from."""

    lines: tuple[LineTotal, ...] = ()
    chains: tuple[ChainTotal, ...] = ()

    def of_periods(self, names: set[str]) -> PeriodTotals:
        return PeriodTotals(tuple(line for line in self.lines if line.key.period in names),
                            tuple(chain for chain in self.chains if chain.period in names))

    @property
    def periods(self) -> dict[str, datetime]:
        """Period name -> end, of every total held."""
        ends = {line.key.period: line.period_end for line in self.lines}
        ends.update((chain.period, chain.period_end) for chain in self.chains)
        return ends


@dataclass(frozen=True, slots=True)
class WaitingPosting:
    """A posting received ahead of a missing sequence of its chain."""

    posted: Posting
    payload: bytes


@dataclass(frozen=True, slots=True)
class LateCharge:
    """A charge that arrived after its period's invoice was issued: it goes on a
    later invoice as an adjustment, and a reversal of it must find that invoice."""

    priced_id: uuid.UUID
    payer_bu: str
    period: str
    period_end: datetime


@dataclass(frozen=True, slots=True)
class ReversalRef:
    """A reversal, with the charge it reverses: its invoice credits that charge's invoice."""

    priced_id: uuid.UUID
    corrects_id: uuid.UUID
    payer_bu: str
    period: str
    period_end: datetime


@dataclass(frozen=True, slots=True)
class Gap:
    """A chain whose next sequence has not arrived while later ones have."""

    chain: str
    missing_sequence: int
    waiting_from: int
    waiting: int


@dataclass(frozen=True)
class Received:
    """What one batch of postings changes."""

    open_lines: tuple[LineTotal, ...]
    """Added to the open totals (not yet on an invoice)."""
    tier_lines: tuple[tuple[uuid.UUID, LineTotal], ...]
    """Period tier adjustments posted back, each with the invoice it belongs to."""
    chains: tuple[ChainTotal, ...]
    """Added to the open chain totals: postings counted, head advanced."""
    watermarks: dict[str, int]
    """Chain -> the sequence through which every posting is applied, where it moved."""
    to_wait: tuple[WaitingPosting, ...]
    released: tuple[tuple[str, int], ...]
    """(chain, sequence) of waiting postings applied now."""
    late: tuple[LateCharge, ...]
    reversals: tuple[ReversalRef, ...]
    gaps: tuple[Gap, ...]
    applied: int
    duplicates: int
    latest_event_time: datetime | None


def billing_periods(events: Sequence[Posting], cycles: Mapping[str, PeriodKind], zone: str) -> list[Period]:
    """Each posting's billing period, by its payer's cycle (month unless set)."""
    return [billing_period(event.event_time, cycles.get(event.payer_bu, DEFAULT_CYCLE), zone) for event in events]


def payer_periods(events: Sequence[Posting], cycles: Mapping[str, PeriodKind], zone: str) -> set[tuple[str, str]]:
    """The (payer, period) pairs the postings are billed in."""
    return {(event.payer_bu, period.name) for event, period in zip(events, billing_periods(events, cycles, zone),
                                                                    strict=True)}


def in_chain_order(batch: Sequence[tuple[Posting, bytes]], watermarks: Mapping[str, int],
                   waiting: Sequence[WaitingPosting]) -> tuple[list[tuple[Posting, bytes]], list[WaitingPosting],
                                                                list[tuple[str, int]], dict[str, int], list[Gap], int]:
    """Which postings apply now, in each chain's order: those that continue their
    chain from its watermark without a gap, including postings that waited for
    this batch. Returns (to apply, to wait, waiting ones released, new watermarks,
    gaps, duplicates). A sequence at or below its chain's watermark, or already
    waiting, or twice in the batch, is a duplicate."""
    by_chain: dict[str, dict[int, tuple[Posting, bytes, bool]]] = defaultdict(dict)
    for stored in waiting:
        by_chain[stored.posted.chain][stored.posted.sequence] = (stored.posted, stored.payload, True)
    duplicates = 0
    for posted, payload in batch:
        chain = by_chain[posted.chain]
        if posted.sequence <= watermarks.get(posted.chain, 0) or posted.sequence in chain:
            duplicates += 1
            continue
        chain[posted.sequence] = (posted, payload, False)
    apply: list[tuple[Posting, bytes]] = []
    to_wait: list[WaitingPosting] = []
    released: list[tuple[str, int]] = []
    moved: dict[str, int] = {}
    gaps: list[Gap] = []
    for name in sorted(by_chain):
        chain = by_chain[name]
        through = watermarks.get(name, 0)
        for sequence in sorted(chain):
            if sequence != through + 1:
                break
            posted, payload, was_waiting = chain.pop(sequence)
            apply.append((posted, payload))
            if was_waiting:
                released.append((name, sequence))
            through = sequence
        if through != watermarks.get(name, 0):
            moved[name] = through
        if chain:
            to_wait += [WaitingPosting(posted, payload) for posted, payload, was_waiting in chain.values() if not was_waiting]
            gaps.append(Gap(name, through + 1, min(chain), len(chain)))
    return apply, to_wait, released, moved, gaps, duplicates


_TOTAL_KINDS: Final[dict[str, TotalKind]] = {"charge": "charge", "correction": "charge", "reversal": "reversal",
                                             "adjustment": "period_tier"}


def receive(batch: Sequence[tuple[Posting, bytes]], *, watermarks: Mapping[str, int],
            waiting: Sequence[WaitingPosting], invoiced: set[tuple[str, str]], cycles: Mapping[str, PeriodKind],
            zone: str) -> Received:
    """Add a batch of postings to the running totals. `watermarks` are the chains'
    applied-through sequences, `waiting` the postings stored ahead of a gap in
    these chains, `invoiced` the (payer, period) pairs with an invoice already.
    Per posting this is the cost that decides invoicing's throughput: keys are
    plain tuples here, and become LineKeys once per distinct key."""
    apply, to_wait, released, moved, gaps, duplicates = in_chain_order(batch, watermarks, waiting)
    events = [posted for posted, _ in apply]
    periods = billing_periods(events, cycles, zone)
    sums: dict[tuple, list] = {}
    chains: dict[tuple[str, str, str], list] = {}
    late: list[LateCharge] = []
    reversals: list[ReversalRef] = []
    latest: datetime | None = None
    for posted, period in zip(events, periods, strict=True):
        if latest is None or posted.event_time > latest:
            latest = posted.event_time
        kind = _TOTAL_KINDS[posted.kind]
        if kind == "period_tier" and posted.invoice_id is None:
            raise ValueError(f"period tier adjustment {posted.priced_id} names no invoice")
        head = (posted.invoice_id if kind == "period_tier" else None, posted.payer_bu, period.name, kind,
                posted.consumer_bu, posted.provider_bu, posted.app, posted.model)
        tail = (posted.book_id, posted.book_version)
        for line in posted.lines:
            key = (*head, line.token_class, line.unit_price_per_million, *tail)
            total = sums.get(key)
            if total is None:
                sums[key] = [period.end, line.tokens, line.amount]
            else:
                total[1] += line.tokens
                total[2] += line.amount
        if kind == "period_tier":
            continue  # on the invoice that computed it already: neither counted nor a head
        chain_key = (posted.payer_bu, period.name, posted.chain)
        chain = chains.get(chain_key)
        if chain is None:
            chains[chain_key] = [period.end, 1, posted.sequence, posted.entry_hash]
        else:  # applied in chain order: the last is the head
            chain[1] += 1
            chain[2], chain[3] = posted.sequence, posted.entry_hash
        if kind == "reversal":
            if posted.corrects_id is not None:
                reversals.append(ReversalRef(posted.priced_id, posted.corrects_id, posted.payer_bu, period.name,
                                             period.end))
        elif (posted.payer_bu, period.name) in invoiced:
            late.append(LateCharge(posted.priced_id, posted.payer_bu, period.name, period.end))
    open_lines: list[LineTotal] = []
    tier_lines: list[tuple[uuid.UUID, LineTotal]] = []
    for (invoice_id, *key), (end, tokens, amount) in sums.items():
        total = LineTotal(LineKey(*key), end, tokens, amount)
        if invoice_id is None:
            open_lines.append(total)
        else:
            tier_lines.append((invoice_id, total))
    return Received(
        open_lines=tuple(open_lines), tier_lines=tuple(tier_lines),
        chains=tuple(ChainTotal(payer, period, end, chain, count, sequence, entry_hash)
                     for (payer, period, chain), (end, count, sequence, entry_hash) in chains.items()),
        watermarks=moved, to_wait=tuple(to_wait), released=tuple(released), late=tuple(late),
        reversals=tuple(reversals), gaps=tuple(gaps), applied=len(apply), duplicates=duplicates,
        latest_event_time=latest,
    )


def totals_of(postings: Sequence[tuple[str, LedgerPosted]], period_ends: Mapping[str, datetime] | None = None) -> PeriodTotals:
    """The running totals of (period, posting) pairs, as `receive` keeps them: for
    tests and tools that start from postings. Period tier adjustments are left
    out, as they are of an invoice's open totals."""
    lines: dict[LineKey, tuple[int, Decimal]] = {}
    chains: dict[tuple[str, str], tuple[int, LedgerPosted]] = {}
    ends = period_ends or {}
    epoch = datetime.min.replace(tzinfo=UTC)
    for period, posted in postings:
        kind = _TOTAL_KINDS[posted.kind]
        if kind == "period_tier":
            continue
        for line in posted.lines:
            key = LineKey(posted.payer_bu, period, kind, posted.consumer_bu, posted.provider_bu, posted.app,
                          posted.model, line.token_class, line.unit_price_per_million, posted.book_id,
                          posted.book_version)
            tokens, amount = lines.get(key, (0, Decimal(0)))
            lines[key] = (tokens + line.tokens, amount + line.amount)
        count, head = chains.get((period, posted.chain), (0, posted))
        chains[(period, posted.chain)] = (count + 1, posted if posted.sequence >= head.sequence else head)
    return PeriodTotals(
        tuple(LineTotal(key, ends.get(key.period, epoch), tokens, amount) for key, (tokens, amount) in lines.items()),
        tuple(ChainTotal(head.payer_bu, period, ends.get(period, epoch), chain, count, head.sequence, head.entry_hash)
              for (period, chain), (count, head) in chains.items()))


# --- invoices ---------------------------------------------------------------------------

def invoice_id_for(payer_bu: str, period: str) -> uuid.UUID:
    return derive_id("invoice", payer_bu, period)


def _line_kind(total: LineTotal, period: str) -> str:
    if total.key.kind == "reversal":
        return "credit"
    return "usage" if total.key.period == period else "adjustment"


def invoice_lines(totals: Iterable[LineTotal], period: str) -> list[InvoiceLine]:
    """Group totals by provider x consumer x model x class x unit price; totals of
    an earlier period become adjustment lines naming it, reversals credit lines."""
    grouped: dict[tuple, tuple[int, Decimal]] = defaultdict(lambda: (0, Decimal(0)))
    for total in totals:
        if total.key.kind == "period_tier":
            continue
        key = (_line_kind(total, period), total.key.period, total.key.provider_bu, total.key.consumer_bu,
               total.key.model, total.key.token_class, total.key.unit_price_per_million)
        tokens, amount = grouped[key]
        grouped[key] = (tokens + total.tokens, amount + total.amount)
    return [
        InvoiceLine(kind=kind, period=line_period, provider_bu=provider, consumer_bu=consumer, model=model,
                    token_class=token_class, tokens=tokens, unit_price_per_million=unit_price, amount=amount)
        for (kind, line_period, provider, consumer, model, token_class, unit_price), (tokens, amount) in sorted(
            grouped.items(), key=lambda item: tuple(str(part) for part in item[0]))
    ]


def rounding_mode_for(totals: Iterable[LineTotal], books: Iterable[PriceBookPublished]) -> RoundingMode:
    """Half-even unless the price books the postings were priced with say otherwise
    (docs/architecture.md decision 5). An invoice is rounded once, in one mode: when its books
    disagree, the default applies and the invoice names the mode it used."""
    modes_by_version = {(book.book_id, book.version): book.rounding for book in books}
    modes = {modes_by_version[(total.key.book_id, total.key.book_version)] for total in totals
             if total.key.kind != "period_tier" and (total.key.book_id, total.key.book_version) in modes_by_version}
    return modes.pop() if len(modes) == 1 else DEFAULT_ROUNDING


def chain_heads(chains: Iterable[ChainTotal]) -> tuple[ChainHeadRef, ...]:
    heads: dict[str, ChainTotal] = {}
    for total in chains:
        if total.chain not in heads or total.head_sequence > heads[total.chain].head_sequence:
            heads[total.chain] = total
    return tuple(ChainHeadRef(chain=head.chain, sequence=head.head_sequence, entry_hash=head.head_hash)
                 for head in sorted(heads.values(), key=lambda total: total.chain))


def build_invoice(
    payer_bu: str,
    period: Period,
    totals: PeriodTotals,
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
    totals assigned to it, rounded once; the rounding is its own figure."""
    lines = invoice_lines(totals.lines, period.name) + list(extra_lines)
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
        postings_count=sum(chain.postings for chain in totals.chains),
        chain_heads=chain_heads(totals.chains),
        issued_at=issued_at,
    )


def period_tier_lines(period: Period, payer_bu: str, totals: Iterable[LineTotal], books: BookIndex) -> list[InvoiceLine]:
    """A line per model with period tiers in the book in force at the period's
    last instant, from the payer's period total of that model's Tokens."""
    tokens: dict[tuple[str, str], int] = {}
    for total in totals:
        if total.key.period == period.name and total.key.kind != "period_tier":
            key = (total.key.model, total.key.provider_bu)
            tokens[key] = tokens.get(key, 0) + total.tokens
    last_instant = period.end - ONE_MICROSECOND
    lines = []
    for (model, provider), count in sorted(tokens.items()):
        book = books.in_force(model, last_instant)
        schedule = book.price_for(model).period_tiers if book else None  # type: ignore[union-attr]
        if schedule is None:
            continue
        lines.append(InvoiceLine(kind="period_tier", period=period.name, provider_bu=provider, consumer_bu=payer_bu,
                                 model=model, tokens=count, amount=period_tier_charge(count, schedule)))
    return lines


def issue_invoice(payer_bu: str, period: Period, totals: PeriodTotals, books: BookIndex, *, number: int,
                  currency: str, minor_units: int, status: str, issued_at: datetime | None) -> InvoiceIssued:
    """The payer's invoice for `period` from the totals assigned to it, with the
    period's tier lines, rounded once in the mode its price books name."""
    return build_invoice(
        payer_bu, period, totals, number=number, currency=currency, minor_units=minor_units,
        rounding_mode=rounding_mode_for(totals.lines, books.versions), status=status, issued_at=issued_at,
        extra_lines=period_tier_lines(period, payer_bu, totals.lines, books),
    )


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


def tier_adjustments(invoice: InvoiceIssued, currency: str) -> list[Priced]:
    """The invoice's period tier lines, each a Priced adjustment for the ledger."""
    return [tier_adjustment(invoice, line, currency) for line in invoice.lines if line.kind == "period_tier"]


@dataclass(frozen=True)
class Draft:
    """Where a payer's draft for a period stands among its drafts, and what it carries."""

    place: int
    periods: set[str] = field(default_factory=set)


def draft_of(open_periods: Mapping[str, datetime], invoiced: set[str], period: Period) -> Draft:
    """What the payer's draft for `period` would carry if every open period closed
    now, and its place among the drafts: each open period gets its own invoice,
    numbered in period order, and totals of periods already invoiced (late usage,
    credits) go on the last one. `open_periods` maps the periods with open totals
    to their ends; `invoiced` names the periods the payer has invoices for."""
    names = [name for _, name in sorted((end, name) for name, end in open_periods.items() if name not in invoiced)]
    last = names[-1] if names else period.name
    carried = {name for name in open_periods if name == period.name or (name in invoiced and period.name == last)}
    return Draft(names.index(period.name) if period.name in names else 0, carried)


# --- settlement -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Flow:
    """Money a payer owes a provider on a month's invoices."""

    payer_bu: str
    provider_bu: str
    amount: Decimal
    kind: str = "charge"


def invoiced_flows(totals: Iterable[LineTotal]) -> list[Flow]:
    """Payer -> provider amounts of the totals on a month's invoices; period tier
    adjustments are counted from the invoices' lines (`netting.gross_flows`)."""
    cells: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for total in totals:
        if total.key.kind != "period_tier":
            cells[(total.key.payer_bu, total.key.provider_bu)] += total.amount
    return [Flow(payer, provider, amount) for (payer, provider), amount in sorted(cells.items())]


def build_settlement(period: Period, flows: Iterable[netting.FlowLike],
                     period_tiers: Sequence[tuple[str, InvoiceLine]] = (), *, currency: str,
                     minor_units: int) -> SettlementNetted:
    """The month's net positions and the transfers that clear them, from what its
    invoices carry: their flows and their period tier lines, as (payer, line)."""
    matrix = netting.gross_flows(flows, period_tiers)
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
