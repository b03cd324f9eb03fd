"""Balances per business unit, summed with the auditor's own arithmetic: from
Priced events (a rebuild) or from account totals (the ledger's answer), and the
differences between the two."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec

from tokenhub.audit.log import exact
from tokenhub.contracts.accounts import DEBIT_NORMAL, AccountKind, account_name, parse_account
from tokenhub.contracts.periods import parse_time

FIGURES: Final = ("spend", "revenue", "tokens_consumed", "tokens_served")
ACCOUNT_FIGURES: Final[dict[str, tuple[str, AccountKind]]] = {
    "spend": ("money", "spend"), "revenue": ("money", "revenue"),
    "tokens_consumed": ("tokens", "consumed"), "tokens_served": ("tokens", "served")}
"""Each figure's (ledger, account kind)."""


class PricedFigures(msgspec.Struct, frozen=True):
    """What balances are rebuilt from, of one Priced. Decoding only these
    fields skips the rest of the event (its lines) without building it, about
    ten times faster than parsing the whole event. The types are the contract's:
    an amount is a string and a Token count an integer, so a float in either is
    refused while decoding."""

    id: str
    event_time: str
    payer_bu: str
    provider_bu: str
    consumer_bu: str
    total_amount: str
    total_tokens: int


FIGURES_DECODER: Final = msgspec.json.Decoder(PricedFigures)


class PricedFacts(msgspec.Struct, frozen=True):
    """A Priced as verify and repricing read it (from a journal row or the log): the fields its entry
    copies and the checks use, decoded without building the rest (its lines stay
    the bytes they are, which the entry copies as they are). The types are the
    contract's: an amount is a string, a Token count an integer."""

    id: str
    kind: str
    consumed_id: str
    event_time: str
    payer_bu: str
    consumer_bu: str
    provider_bu: str
    model: str
    currency: str
    lines: msgspec.Raw
    total_amount: str
    total_tokens: int
    book_id: str | None = None
    book_version: int | None = None
    app: str | None = None
    corrects_id: str | None = None
    invoice_id: str | None = None


PRICED_DECODER: Final = msgspec.json.Decoder(PricedFacts)


def figures(event: Mapping[str, Any]) -> PricedFigures:
    """The figures of an event already parsed whole (from a topic, say); `rebuild` checks them with `exact`."""
    return PricedFigures(event["id"], event["event_time"], event["payer_bu"], event["provider_bu"], event["consumer_bu"],
                         event["total_amount"], event["total_tokens"])


Balances = dict[str, dict[str, Decimal]]

ACCOUNT_TOTALS: Final = """
select legs.ledger, legs.account, sum(legs.debit) as debit_total, sum(legs.credit) as credit_total
from ledger.journal j,
     lateral (values ('money', j.money_debit, j.amount, 0::numeric), ('money', j.money_credit, 0::numeric, j.amount),
                     ('tokens', j.tokens_debit, j.tokens::numeric, 0::numeric),
                     ('tokens', j.tokens_credit, 0::numeric, j.tokens::numeric)) as legs(ledger, account, debit, credit)
{where}
group by legs.ledger, legs.account
"""
"""Debit and credit totals per account, summed from the journal's transfers:
each row debits one account and credits another by one quantity per ledger."""


def zero() -> dict[str, Decimal]:
    return dict.fromkeys(FIGURES, Decimal(0))


def figures_document(values: Mapping[str, Decimal]) -> dict[str, str]:
    """A BU's figures as JSON: exact, in plain notation."""
    return {figure: f"{values[figure]:f}" for figure in FIGURES}


def rebuild(events: Iterable[PricedFigures | PricedFacts | Mapping[str, Any]], as_of: datetime | None = None,
            amounts: dict[str, Decimal] | None = None) -> Balances:
    """Balances straight from Priced events: spend of the payer and revenue of
    the provider; Tokens consumed by the consumer and served by the provider.
    `amounts` replaces recorded amounts by recomputed ones (by Priced id)."""
    if as_of is None and not amounts:
        return _rebuild_in_units(events)
    totals: Balances = defaultdict(zero)
    for event in events:
        if isinstance(event, Mapping):
            event = figures(event)
        if as_of is not None and parse_time(event.event_time) > as_of:
            continue
        amount = amounts[event.id] if amounts and event.id in amounts else exact(event.total_amount)
        tokens = exact(event.total_tokens)
        totals[event.payer_bu]["spend"] += amount
        totals[event.provider_bu]["revenue"] += amount
        totals[event.consumer_bu]["tokens_consumed"] += tokens
        totals[event.provider_bu]["tokens_served"] += tokens
    return dict(totals)


AMOUNT_PLACES: Final = 12
"""Amounts are written at 12 decimal places: counted as integers of 10^-12, they add exactly."""


def _units(text: str) -> int | None:
    """An amount written at the fixed 12 places as its count of 10^-12; None for any other form."""
    whole, point, fraction = text.partition(".")
    if point and len(fraction) == AMOUNT_PLACES and fraction.isdigit() and (
            whole.isdigit() or whole[:1] == "-" and whole[1:].isdigit()):
        return int(whole + fraction)
    return None


Counts = dict[str, list[int]]
"""Per BU, in the order BUs came: spend and revenue in 10^-12, Tokens consumed
and served, and a bit per figure added to (in FIGURES' order)."""


def count_in_units(events: Iterable[PricedFigures | PricedFacts | Mapping[str, Any]], counted: Counts,
                   others: list[PricedFigures | PricedFacts]) -> None:
    """Add events to `counted` in integers: an amount at the fixed scale and a
    whole Token count. An event in any other form is kept in `others`, in the
    order it came, for `balances_in_units` to add as Decimals; its BUs are
    counted (at zero) where they came, so the order of BUs is the events' order."""
    for event in events:
        if not isinstance(event, PricedFigures | PricedFacts):
            event = figures(event)
        amount = _units(event.total_amount) if type(event.total_amount) is str else None
        tokens = event.total_tokens
        if amount is None or type(tokens) is not int:
            others.append(event)
            for bu in (event.payer_bu, event.provider_bu, event.consumer_bu):  # the BUs in the order they came
                counted.setdefault(bu, [0, 0, 0, 0, 0])
            continue
        payer = counted.get(event.payer_bu) or counted.setdefault(event.payer_bu, [0, 0, 0, 0, 0])
        payer[0] += amount
        payer[4] |= 1
        provider = counted.get(event.provider_bu) or counted.setdefault(event.provider_bu, [0, 0, 0, 0, 0])
        provider[1] += amount
        provider[3] += tokens
        provider[4] |= 2 | 8
        consumer = counted.get(event.consumer_bu) or counted.setdefault(event.consumer_bu, [0, 0, 0, 0, 0])
        consumer[2] += tokens
        consumer[4] |= 4


def add_counts(counted: Counts, part: Counts) -> None:
    """Add the counts of a later part of the events to `counted`: integers add
    exactly in any grouping, and a BU new to `counted` comes after those it has,
    as it would have come had the parts been counted as one."""
    for bu, row in part.items():
        mine = counted.get(bu)
        if mine is None:
            counted[bu] = list(row)
            continue
        for figure in range(4):
            mine[figure] += row[figure]
        mine[4] |= row[4]


def balances_in_units(counted: Counts, others: Iterable[PricedFigures | PricedFacts]) -> Balances:
    """The counts as Decimals, once per BU and figure, and the events of other
    forms added as `rebuild` adds them, in their order."""
    extra: Balances = defaultdict(zero)
    for event in others:
        exact_amount, exact_tokens = exact(event.total_amount), exact(event.total_tokens)
        extra[event.payer_bu]["spend"] += exact_amount
        extra[event.provider_bu]["revenue"] += exact_amount
        extra[event.consumer_bu]["tokens_consumed"] += exact_tokens
        extra[event.provider_bu]["tokens_served"] += exact_tokens
    totals: Balances = {}
    for bu, row in counted.items():
        values = totals[bu] = zero()
        for figure, name in enumerate(FIGURES):
            if row[4] & (1 << figure):
                values[name] = Decimal(row[figure]).scaleb(-AMOUNT_PLACES) if figure < 2 else Decimal(row[figure])
    for bu, values in extra.items():
        mine = totals[bu]
        for name in FIGURES:
            mine[name] += values[name]
    return totals


def _rebuild_in_units(events: Iterable[PricedFigures | PricedFacts | Mapping[str, Any]]) -> Balances:
    """The whole rebuild, as `rebuild` does it, counted in integers: an amount at
    the fixed scale and a whole Token count add as ints (exactly, as Decimals
    add them) and become Decimals once per BU and figure; an event in any other
    form takes the Decimal path."""
    counted: Counts = {}
    others: list[PricedFigures | PricedFacts] = []
    count_in_units(events, counted, others)
    return balances_in_units(counted, others)


def figures_of(rows: Iterable[asyncpg.Record | dict[str, Any]]) -> Balances:
    """Per BU from account totals: spend and consumed are debit balances,
    revenue and served credit balances."""
    by_kind = {kind: figure for figure, (_, kind) in ACCOUNT_FIGURES.items()}
    totals: Balances = defaultdict(zero)
    for row in rows:
        bu, kind = parse_account(row["account"])
        debit_balance = row["debit_total"] - row["credit_total"]
        totals[bu][by_kind[kind]] += debit_balance if kind in DEBIT_NORMAL else -debit_balance
    return dict(totals)


@dataclass(frozen=True)
class Difference:
    bu: str
    figure: str
    rebuilt: Decimal
    projected: Decimal

    def __iter__(self):  # noqa: ANN204 - unpacks as (bu, figure, rebuilt, projected)
        return iter((self.bu, self.figure, self.rebuilt, self.projected))

    def row(self, as_of: datetime | None) -> str:
        ledger, kind = ACCOUNT_FIGURES[self.figure]
        if as_of is None:
            return f"ledger.balances ({ledger}, {account_name(self.bu, kind)})"
        return f"journal ({ledger}, {account_name(self.bu, kind)}) as of {as_of.isoformat()}"


def diff(rebuilt: Balances, projected: Balances, bu: str | None = None) -> list[Difference]:
    names = sorted((set(rebuilt) | set(projected)) if bu is None else {bu})
    empty = zero()
    return [
        Difference(name, figure, rebuilt.get(name, empty)[figure], projected.get(name, empty)[figure])
        for name in names
        for figure in FIGURES
        if rebuilt.get(name, empty)[figure] != projected.get(name, empty)[figure]
    ]

