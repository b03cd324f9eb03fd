"""Invoicing's functional core. Postings are added into running totals per
invoice-line key; duplicates are recognised by each chain's gapless sequence;
a period's totals become an invoice, rounded once, with its period tier lines;
a month's invoiced flows are netted into a settlement. No I/O, clock or
logging here: the shell passes times and the stored state."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, Literal, NamedTuple

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
from tokenhub.contracts.periods import Period, PeriodKind, billing_period, containing, parse
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

TotalKind = Literal["charge", "overage", "reversal", "period_tier"]
"""What a running total adds up: charges (and corrections, which are charges at
a new price), charges the ledger marked as posted over quota (overage: billed
like any charge, shown apart), reversals (credit lines), or period tier
adjustments posted back by the ledger, which belong to the invoice that
computed them."""


# --- running totals ---------------------------------------------------------------------

class LineKey(NamedTuple):
    """What a running total is kept by: an invoice line's key (payer, period,
    provider, consumer, model, class, unit price, and whether it credits), plus
    the app (month-to-date spend shows it) and the price book version (an
    invoice rounds in the mode its books name). Tuples: a close builds one per
    total it reads, so they cost what a tuple costs."""

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


class LineTotal(NamedTuple):
    key: LineKey
    period_end: datetime
    tokens: int
    amount: Decimal


class ChainTotal(NamedTuple):
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
        kind = _TOTAL_KINDS[posted.kind] if posted.overage is not True else "overage"
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
        kind = _TOTAL_KINDS[posted.kind] if posted.overage is not True else "overage"
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
    an earlier period become adjustment lines naming it, reversals credit lines;
    usage posted over quota its own lines, marked overage (same sum, shown apart)."""
    grouped: dict[tuple, tuple[int, Decimal]] = defaultdict(lambda: (0, Decimal(0)))
    for total in totals:
        if total.key.kind == "period_tier":
            continue
        key = (_line_kind(total, period), total.key.period, total.key.provider_bu, total.key.consumer_bu,
               total.key.model, total.key.token_class, total.key.unit_price_per_million, total.key.kind == "overage")
        tokens, amount = grouped[key]
        grouped[key] = (tokens + total.tokens, amount + total.amount)
    return [
        InvoiceLine(kind=kind, period=line_period, provider_bu=provider, consumer_bu=consumer, model=model,
                    token_class=token_class, tokens=tokens, unit_price_per_million=unit_price, amount=amount,
                    overage=True if overage else None)
        for (kind, line_period, provider, consumer, model, token_class, unit_price, overage), (tokens, amount) in sorted(
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


# --- period tiers: plans, and late usage re-evaluated -------------------------------------

PLAN_MONTHS_MAX: Final = 120
"""Months one plan may cover: ten years of monthly fees is a contract, more is a typo."""


class PlanError(ValueError):
    """A plan that cannot be assigned or ended as asked."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A payer assigned to a price book's period tiers for one model, for a range
    of months: every billing period of the payer in those months gets its tier
    line at close, the first tier's flat fee included, with or without usage."""

    plan_id: uuid.UUID
    payer_bu: str
    book_id: str
    model: str
    provider_bu: str
    first_month: str
    last_month: str | None
    actor: str
    reason: str
    assigned_at: datetime

    def covers(self, payer_bu: str, period: Period, zone: str) -> bool:
        month = month_of(period, zone)
        return (payer_bu == self.payer_bu and self.first_month <= month
                and (self.last_month is None or month <= self.last_month))


def month_of(period: Period, zone: str) -> str:
    """The month a billing period nests in."""
    return containing(period.start, "month", zone).name


def plan_id_for(payer_bu: str, book_id: str, model: str, first_month: str) -> uuid.UUID:
    return derive_id("plan", payer_bu, book_id, model, first_month)


def assign_plan(existing: Sequence[Plan], *, payer_bu: str, book_id: str, model: str, provider_bu: str,
                first: Period, last: Period | None, books: BookIndex, actor: str, reason: str, now: datetime,
                zone: str) -> Plan:
    """A new plan, or why not: months only, not starting in a month that has ended,
    not overlapping another plan of the payer for the model, and a book that has
    period tiers for the model."""
    if first.kind != "month" or (last is not None and last.kind != "month"):
        raise PlanError("a plan runs over whole months: give months such as 2026-04")
    if first.end <= now:
        raise PlanError(f"{first.name} has ended (at {first.end.isoformat()}): a plan starts in the current month or later")
    if last is not None and last.start < first.start:
        raise PlanError(f"a plan cannot end ({last.name}) before it starts ({first.name})")
    if last is not None and len(_months(first, last, zone)) > PLAN_MONTHS_MAX:
        raise PlanError(f"a plan covers at most {PLAN_MONTHS_MAX} months")
    if not any(book.book_id == book_id and (price := book.price_for(model)) is not None and price.period_tiers
               for book in books.versions):
        raise PlanError(f"price book {book_id} has no period tiers for {model}")
    for plan in existing:
        if plan.payer_bu == payer_bu and plan.model == model and _overlap(plan, first.name, last.name if last else None):
            raise PlanError(f"{payer_bu} already has a plan for {model} from {plan.first_month} to "
                            f"{plan.last_month or 'open end'} (book {plan.book_id})")
    return Plan(plan_id_for(payer_bu, book_id, model, first.name), payer_bu, book_id, model, provider_bu, first.name,
                last.name if last else None, actor, reason, now)


def end_plan(plan: Plan, last: Period, now: datetime) -> Plan:
    """The plan ending with month `last` (the current month or later; never before it starts)."""
    if last.kind != "month":
        raise PlanError("a plan ends with a whole month: give a month such as 2026-06")
    if last.end <= now:
        raise PlanError(f"{last.name} has ended: periods already billed under the plan stay billed; end it with the "
                        "current month or later")
    if last.name < plan.first_month:
        raise PlanError(f"the plan starts in {plan.first_month}: it cannot end in {last.name}")
    return Plan(plan.plan_id, plan.payer_bu, plan.book_id, plan.model, plan.provider_bu, plan.first_month, last.name,
                plan.actor, plan.reason, plan.assigned_at)


def _overlap(plan: Plan, first: str, last: str | None) -> bool:
    return (plan.last_month is None or first <= plan.last_month) and (last is None or plan.first_month <= last)


def _months(first: Period, last: Period, zone: str) -> list[Period]:
    months = [first]
    while months[-1].end <= last.start and len(months) <= PLAN_MONTHS_MAX:
        months.append(months[-1].next(zone))
    return months


def close_horizon(watermark: datetime, now: datetime, lateness_hours: int) -> datetime:
    """Periods that ended by this moment are due. The lateness is allowed after
    whichever comes first, the event-time watermark or the clock: an event time
    ahead of the clock (a skewed producer, a line dated at its period's end) must
    not close a period the moment it ends."""
    return min(watermark, now) - timedelta(hours=lateness_hours)


def due_periods(open_totals: Sequence[tuple[str, str]], invoiced: set[tuple[str, str]], zone: str) -> list[str]:
    """The periods a close at the horizon would invoice, by their end: those with open
    totals of a payer that has no invoice for the period yet. Open totals of a period
    its payer was invoiced for (late usage, credits) wait for that payer's next
    invoice, so closing their period again would issue nothing; asked after every
    batch, it must not (each close takes the invoices lock)."""
    names = {period for payer_bu, period in open_totals if (payer_bu, period) not in invoiced}
    return sorted(names, key=lambda name: (parse(name, zone).end, name))


def plan_periods(plans: Sequence[Plan], cycles: Mapping[str, PeriodKind], invoiced: set[tuple[str, str]],
                 end: datetime, zone: str, since: datetime | None = None) -> list[tuple[str, Period]]:
    """(payer, period) of every billing period a plan covers that ended by `end`
    and has no invoice yet: each gets its tier lines at the close that reaches it.
    `since` skips the months that ended before it (a question asked after every
    batch looks back a month, not over the whole of every plan)."""
    due: dict[tuple[str, str], Period] = {}
    for plan in plans:
        month = parse(plan.first_month, zone)
        if since is not None and month.end <= since:
            month = containing(since, "month", zone)
        for _ in range(PLAN_MONTHS_MAX):
            if month.end > end or (plan.last_month is not None and month.name > plan.last_month):
                break
            for period in billing_periods_of(month, cycles.get(plan.payer_bu, DEFAULT_CYCLE), zone):
                if period.end <= end and (plan.payer_bu, period.name) not in invoiced:
                    due[(plan.payer_bu, period.name)] = period
            month = month.next(zone)
    return sorted(((payer, period) for (payer, _), period in due.items()), key=lambda item: (item[0], item[1].end))


def billing_periods_of(month: Period, kind: PeriodKind, zone: str) -> list[Period]:
    """A month's billing periods of `kind`, in order (weeks cut at the month's edges)."""
    periods = []
    moment = month.start
    while moment < month.end:
        period = billing_period(moment, kind, zone)
        periods.append(period)
        moment = period.end
    return periods


@dataclass(frozen=True)
class TierState:
    """What a period's tier charge is re-evaluated from: its Tokens per (model,
    provider) over all its totals, invoiced or open, and the tier charges its
    payer's issued invoices already carry for it."""

    tokens: Mapping[tuple[str, str], int]
    charged: Mapping[tuple[str, str], Decimal]


def _schedule(payer_bu: str, period: Period, model: str, books: BookIndex, plans: Sequence[Plan], zone: str):  # noqa: ANN202
    """The period tiers that apply: the plan's book where a plan covers the period,
    else the book in force at the period's last instant."""
    last_instant = period.end - ONE_MICROSECOND
    for plan in plans:
        if plan.model == model and plan.covers(payer_bu, period, zone):
            book = BookIndex(tuple(version for version in books.versions if version.book_id == plan.book_id)).in_force(
                model, last_instant)
            return book.price_for(model).period_tiers if book else None  # type: ignore[union-attr]
    book = books.in_force(model, last_instant)
    return book.price_for(model).period_tiers if book else None  # type: ignore[union-attr]


def period_tier_lines(period: Period, payer_bu: str, totals: Iterable[LineTotal], books: BookIndex,
                      plans: Sequence[Plan] = (), zone: str = "Asia/Shanghai",
                      late: Mapping[str, TierState] | None = None, late_periods: Mapping[str, Period] | None = None,
                      ) -> list[InvoiceLine]:
    """The invoice's period tier lines. For its own period, a line per model with
    period tiers, from the payer's period total of that model's Tokens, and a line
    per model a plan covers, with or without usage. For an earlier period whose
    late usage the invoice carries, the difference between that period's tier
    charge on all its usage now and what its invoices charged (`late`)."""
    own: dict[tuple[str, str], int] = {}
    earlier: set[tuple[str, str, str]] = set()
    for total in totals:
        if total.key.kind == "period_tier":
            continue
        if total.key.period == period.name:
            key = (total.key.model, total.key.provider_bu)
            own[key] = own.get(key, 0) + total.tokens
        else:
            earlier.add((total.key.period, total.key.model, total.key.provider_bu))
    for plan in plans:
        if plan.covers(payer_bu, period, zone):
            own.setdefault((plan.model, plan.provider_bu), 0)
    lines = []
    for (model, provider), count in sorted(own.items()):
        schedule = _schedule(payer_bu, period, model, books, plans, zone)
        if schedule is not None:
            lines.append(InvoiceLine(kind="period_tier", period=period.name, provider_bu=provider, consumer_bu=payer_bu,
                                     model=model, tokens=count, amount=period_tier_charge(count, schedule)))
    for name, model, provider in sorted(earlier):
        state = (late or {}).get(name)
        earlier_period = (late_periods or {}).get(name)
        if state is None or earlier_period is None:
            continue
        schedule = _schedule(payer_bu, earlier_period, model, books, plans, zone)
        if schedule is None:
            continue
        count = state.tokens.get((model, provider), 0)
        difference = period_tier_charge(max(count, 0), schedule) - state.charged.get((model, provider), Decimal(0))
        if difference:
            lines.append(InvoiceLine(kind="period_tier", period=name, provider_bu=provider, consumer_bu=payer_bu,
                                     model=model, tokens=count, amount=difference))
    return lines


def charged_tiers(invoices: Iterable[InvoiceIssued], periods: set[str]) -> dict[str, dict[tuple[str, str], Decimal]]:
    """Per period: the tier charges the invoices carry for it, by (model, provider)."""
    charged: dict[str, dict[tuple[str, str], Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for invoice in invoices:
        for line in invoice.lines:
            if line.kind == "period_tier" and line.period in periods:
                charged[line.period][(line.model, line.provider_bu)] += line.amount
    return charged


def issue_invoice(payer_bu: str, period: Period, totals: PeriodTotals, books: BookIndex, *, number: int,
                  currency: str, minor_units: int, status: str, issued_at: datetime | None,
                  plans: Sequence[Plan] = (), zone: str = "Asia/Shanghai", late: Mapping[str, TierState] | None = None,
                  late_periods: Mapping[str, Period] | None = None) -> InvoiceIssued:
    """The payer's invoice for `period` from the totals assigned to it, with the
    period's tier lines (and re-evaluated ones for late usage of earlier periods),
    rounded once in the mode its price books name."""
    return build_invoice(
        payer_bu, period, totals, number=number, currency=currency, minor_units=minor_units,
        rounding_mode=rounding_mode_for(totals.lines, books.versions), status=status, issued_at=issued_at,
        extra_lines=period_tier_lines(period, payer_bu, totals.lines, books, plans, zone, late, late_periods),
    )


def tier_adjustment(invoice: InvoiceIssued, line: InvoiceLine, currency: str) -> Priced:
    """The period tier line as a Priced adjustment, so the ledger posts it. A line
    re-evaluating an earlier period's tier is named by that period too."""
    parts = (str(invoice.invoice_id), line.model) + (() if line.period == invoice.period else (line.period,))
    adjustment_id = derive_id("period_tier", *parts)
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
    """A draft invoice to be: its period, its place among the payer's drafts (its
    number is the next one plus the place), and the periods whose totals it carries."""

    period: Period
    place: int
    periods: frozenset[str]


def drafts_of(open_periods: Mapping[str, Period], invoiced: set[str], carrier: Period,
              carrier_planned: bool = False) -> list[Draft]:
    """The payer's drafts if every open period closed now: each open period not yet
    invoiced its own, numbered in period order; totals of periods already invoiced
    (late usage, credits) go on the last of them, or, when there is none, on a
    draft for `carrier` (the payer's first period from now that has no invoice),
    which a plan covering it (`carrier_planned`) also drafts, for its fee.
    Every draft has its own number."""
    fresh = sorted((period for name, period in open_periods.items() if name not in invoiced), key=lambda p: (p.end, p.name))
    if carrier_planned and carrier.name not in invoiced and all(period.name != carrier.name for period in fresh):
        fresh.append(carrier)
    late = frozenset(name for name in open_periods if name in invoiced)
    drafts = [Draft(period, place, frozenset({period.name})) for place, period in enumerate(fresh)]
    if late:
        if drafts:
            drafts[-1] = Draft(drafts[-1].period, drafts[-1].place, drafts[-1].periods | late)
        else:
            drafts.append(Draft(carrier, 0, late))
    return drafts


def carrier_period(current: Period, invoiced: set[str], zone: str) -> Period:
    """The first period from `current` on that has no invoice: a period closed before
    it ended sends its later usage to the next one."""
    period = current
    while period.name in invoiced:
        period = period.next(zone)
    return period


# --- closing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Closing:
    """An invoice a close issues, and the open totals it takes: the payer's with a
    period end in (`after`, the invoice's period end]; an earlier invoice of the
    same close took those up to `after`."""

    invoice: InvoiceIssued
    after: datetime | None
    carrying_late: bool = False
    """Issued for the period being closed to carry totals still open after the due periods'."""


def in_close_order(closings: Iterable[Closing]) -> list[Closing]:
    """Every payer's due periods first (by payer, then end), then the invoices that
    carry late totals, by payer: the order a close has always issued in."""
    closings = list(closings)
    return [closing for closing in closings if not closing.carrying_late] + [
        closing for closing in closings if closing.carrying_late]


def close_payer(payer_bu: str, due: Sequence[Period], target: Period, totals: PeriodTotals, *, number: int,
                invoiced: set[str], books: BookIndex, plans: Sequence[Plan], late: Mapping[str, TierState],
                zone: str, currency: str, minor_units: int, now: datetime) -> list[Closing]:
    """One payer's invoices at a close, in order: one per due period (by its end)
    that has open totals ending by then or a plan covering it, and has no invoice
    yet; then, for totals still open (late usage and credits of periods invoiced
    before), one for the period being closed. Numbers follow on without gaps from
    `number`. `totals` are the payer's open totals ending by the target's end;
    `late` the tier state of its periods invoiced before."""
    remaining = list(totals.lines), list(totals.chains)
    closings: list[Closing] = []
    after: datetime | None = None
    invoiced = set(invoiced)

    def issue(period: Period, plans_only_ok: bool, carrying_late: bool = False) -> None:
        nonlocal remaining, after, number
        lines = [total for total in remaining[0] if total.period_end <= period.end]
        chains = [total for total in remaining[1] if total.period_end <= period.end]
        if not lines and not chains and not (plans_only_ok and any(plan.covers(payer_bu, period, zone) for plan in plans)):
            return  # an earlier invoice of this close took them
        if period.name in invoiced:
            return  # issued before: these totals wait for the payer's next invoice
        carried = PeriodTotals(tuple(lines), tuple(chains))
        earlier = {name: parse(name, zone) for name in carried.periods if name != period.name}
        states = {name: late.get(name) or _state_of(carried, name) for name in earlier}
        invoice = issue_invoice(payer_bu, period, carried, books, number=number, currency=currency,
                                minor_units=minor_units, status="issued", issued_at=now, plans=plans, zone=zone,
                                late=states, late_periods=earlier)
        closings.append(Closing(invoice, after, carrying_late))
        invoiced.add(period.name)
        number += 1
        after = period.end
        remaining = ([total for total in remaining[0] if total.period_end > period.end],
                     [total for total in remaining[1] if total.period_end > period.end])

    for period in sorted(due, key=lambda period: (period.end, period.name)):
        issue(period, plans_only_ok=True)
    issue(target, plans_only_ok=False, carrying_late=True)
    return closings


def _state_of(totals: PeriodTotals, period: str) -> TierState:
    """An earlier period never invoiced: all its totals are open, none charged."""
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    for total in totals.lines:
        if total.key.period == period and total.key.kind != "period_tier":
            tokens[(total.key.model, total.key.provider_bu)] += total.tokens
    return TierState(dict(tokens), {})



class PeriodNotEnded(ValueError):
    """A close asked for before the period ends, without saying it is meant."""

    def __init__(self, period: Period, now: datetime) -> None:
        self.period = period
        super().__init__(f"{period.name} has not ended: it ends at {period.end.isoformat()}, it is now "
                         f"{now.isoformat()}. Its invoices would never change: usage of {period.name} that arrives "
                         f"later would go on each payer's next invoice. Close it early only on purpose.")


def check_close(period: Period, now: datetime, *, early: bool) -> None:
    if now < period.end and not early:
        raise PeriodNotEnded(period, now)


def what_follows_an_early_close(period: Period) -> str:
    """What a close before the period's end means, said when it happens."""
    return (f"{period.name} was closed before it ends ({period.end.isoformat()}): its invoices are final. Usage of "
            f"{period.name} that arrives from now on goes on each payer's next invoice as adjustment lines naming "
            f"{period.name}; a payer whose first usage of {period.name} comes later gets its own invoice for it at the "
            "next close, and a settled month is then settled again with the next revision number.")


# --- settlement -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Flow:
    """Money a payer owes a provider on a month's invoices."""

    payer_bu: str
    provider_bu: str
    amount: Decimal
    kind: str = "charge"


def settlement_id(period: str, revision: int) -> uuid.UUID:
    """The first settlement of a month keeps the id it always had; revisions name theirs."""
    return derive_id("settlement", period) if revision == 1 else derive_id("settlement", period, f"revision-{revision}")


def build_settlement(period: Period, flows: Iterable[netting.FlowLike],
                     period_tiers: Sequence[tuple[str, InvoiceLine]] = (), *, currency: str,
                     minor_units: int, revision: int = 1, invoices: Iterable[uuid.UUID] = ()) -> SettlementNetted:
    """The month's net positions and the transfers that clear them, from what its
    invoices carry: their flows and their period tier lines, as (payer, line).
    `invoices` are the ids of the invoices it covers; a month settled again when
    more invoices are issued for it gets the next revision."""
    matrix = netting.gross_flows(flows, period_tiers)
    positions = netting.positions_from_matrix(matrix)
    rounded, absorber = netting.round_positions(positions, minor_units, SETTLEMENT_ROUNDING)
    return SettlementNetted(
        id=settlement_id(period.name, revision),
        event_time=period.end,
        cause_id=f"settlement:{period.name}" + ("" if revision == 1 else f":revision-{revision}"),
        revision=revision,
        invoices=tuple(sorted(set(invoices))),
        period=period.name,
        currency=currency,
        matrix=matrix,
        positions=positions,
        rounded_positions=rounded,
        rounding_residue_bu=absorber,
        transfers=netting.transfers(rounded),
    )
