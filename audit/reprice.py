"""Pricing recomputed with the auditor's own arithmetic (invariant 4, docs/architecture.md):
each Priced from its TokenConsumed and the price book version it names, read
from pricing's stored rows, none of pricing's code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, Final

import asyncpg
import msgspec

from tokenhub.audit.balances import PricedFacts
from tokenhub.audit.log import exact, loads
from tokenhub.contracts.stored import StoredPayloadError, unpack

QUANTUM: Final = Decimal("0.000000000001")
MILLION: Final = Decimal(1_000_000)
SCALE: Final = 10**12
"""Amounts and unit prices carry 12 decimal places: as integers they are counted in units of 10^-12."""
PER_MILLION: Final = 10**6


class NotRecomputable(ValueError):
    pass


class ConsumedFacts(msgspec.Struct, frozen=True):
    """A TokenConsumed as repricing and the share check read it, decoded alone."""

    id: str
    usage_source: str
    usage_id: str
    payer_bu: str
    consumer_bu: str
    model: str
    tokens: dict[str, int]
    request_input_tokens: int
    share_percent: str = "100"
    payer_index: int = 0
    payer_count: int = 1


CONSUMED_DECODER: Final = msgspec.json.Decoder(ConsumedFacts)


def _fixed(value: Decimal) -> Decimal:
    with localcontext() as context:
        context.prec = 60
        return value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def _units(text: str) -> int:
    """An amount or unit price as an integer count of 10^-12."""
    whole, point, fraction = text.partition(".")
    if point and len(fraction) == 12 and whole.lstrip("-").isdigit() and fraction.isdigit():
        return int(whole + fraction)
    with localcontext() as context:
        context.prec = 60
        exact_value = Decimal(text) * SCALE
    if exact_value != exact_value.to_integral_value():
        raise NotRecomputable(f"{text} has more than 12 decimal places")
    return int(exact_value)


def _amount(units: int) -> Decimal:
    """An integer count of 10^-12 as the amount it is, written at 12 places."""
    whole, fraction = divmod(abs(units), SCALE)
    return Decimal(f"{'-' if units < 0 else ''}{whole}.{fraction:012d}")


def _per_million_half_even(numerator: int) -> int:
    """numerator / 10^6, rounded half-even: Tokens x a price in 10^-12 units
    gives an amount in 10^-12 units."""
    quotient, remainder = divmod(numerator, PER_MILLION)
    if remainder * 2 > PER_MILLION or (remainder * 2 == PER_MILLION and quotient % 2):
        quotient += 1
    return quotient


def unit_prices(consumed: ConsumedFacts, book: dict[str, Any]) -> dict[str, int]:
    """Unit prices per million per class, in 10^-12 units, for one consumption
    under one book version: base prices, replaced whole by the highest context
    tier the request's input exceeds, times the payer's factor, each fixed at 12
    places half-even."""
    entry = next((model for model in book["models"] if model["model"] == consumed.model), None)
    if entry is None:
        raise NotRecomputable(f"book {book['book_id']} v{book['version']} has no price for {consumed.model}")
    prices = dict(entry["unit_prices_per_million"])
    reached = [tier for tier in entry.get("context_tiers", ()) if consumed.request_input_tokens > tier["above_input_tokens"]]
    if reached:
        prices.update(max(reached, key=lambda tier: tier["above_input_tokens"])["unit_prices_per_million"])
    factor = next((Decimal(adjustment["factor"]) for adjustment in entry.get("bu_adjustments", ())
                   if adjustment["bu"] == consumed.payer_bu), None)
    return {token_class: _units(f"{_fixed(Decimal(price) * factor):f}") if factor is not None else _units(price)
            for token_class, price in prices.items()}


def recompute_lines(consumed: ConsumedFacts, book: dict[str, Any],
                    prices: dict[str, int] | None = None) -> list[tuple[str, int, Decimal, Decimal]]:
    """(class, Tokens, unit price per million, amount) for one consumption under
    one book version; amount = Tokens x price / 1e6 at 12 places half-even."""
    prices = unit_prices(consumed, book) if prices is None else prices
    lines = []
    for token_class, tokens in consumed.tokens.items():
        if token_class not in prices:
            raise NotRecomputable(f"no {token_class} price for {consumed.model}")
        unit = prices[token_class]
        lines.append((token_class, tokens, _amount(unit), _amount(_per_million_half_even(tokens * unit))))
    return lines


@dataclass
class Repricing:
    amounts: dict[str, Decimal] = field(default_factory=dict)
    mismatches: list[tuple[str, str, Decimal, Decimal]] = field(default_factory=list)
    """(priced id, kind, recorded, recomputed)"""
    unrecomputable: list[tuple[str, str]] = field(default_factory=list)
    """(priced id, why)"""
    kept: int = 0
    """Period tier adjustments: no TokenConsumed; verify checks them against their invoice."""


# Every TokenConsumed, from metering's record of what it produced (pricing keeps no
# copy), stored packed (contracts.stored).
SELECT_CONSUMED: Final = "select payload from metering.consumed"
SELECT_BOOKS: Final = "select book_id, version, payload from pricing.price_books"


async def load_pricing_inputs(connection: asyncpg.Connection) -> tuple[dict[str, ConsumedFacts], dict[tuple[str, int], dict]]:
    consumed = {}
    for row in await connection.fetch(SELECT_CONSUMED):
        try:
            event = CONSUMED_DECODER.decode(unpack(row["payload"]))
        except (msgspec.DecodeError, msgspec.ValidationError, StoredPayloadError) as error:
            raise NotRecomputable(f"a TokenConsumed in metering's record cannot be read: {error}") from None
        consumed[event.id] = event
    books = {(row["book_id"], row["version"]): loads(row["payload"]) for row in await connection.fetch(SELECT_BOOKS)}
    return consumed, books


def reprice(events: Sequence[PricedFacts], consumed: dict[str, ConsumedFacts], books: dict[tuple[str, int], dict]) -> Repricing:
    """Every Priced's amount from its TokenConsumed and its book version;
    a reversal is the negative of what it reverses, recomputed the same way.
    Integer arithmetic in 10^-12 units; the unit prices of a book, model, payer
    and context tier are worked out once."""
    result = Repricing()
    by_id = {event.id: event for event in events}
    price_tables: dict[tuple[Any, ...], dict[str, int]] = {}

    def recomputed(event: PricedFacts) -> int:
        source = consumed.get(event.consumed_id)
        if source is None:
            raise NotRecomputable(f"no TokenConsumed {event.consumed_id} in metering's record")
        book = books.get((event.book_id or "", event.book_version or 0))
        if book is None:
            raise NotRecomputable(f"no price book {event.book_id} v{event.book_version}")
        key = (event.book_id, event.book_version, source.model, source.payer_bu, source.request_input_tokens)
        prices = price_tables.get(key)
        if prices is None:
            prices = price_tables[key] = unit_prices(source, book)
        total = 0
        for token_class, tokens in source.tokens.items():
            unit = prices.get(token_class)
            if unit is None:
                raise NotRecomputable(f"no {token_class} price for {source.model}")
            total += _per_million_half_even(tokens * unit)
        return total

    for event in events:
        kind = event.kind
        try:
            if kind == "adjustment":
                result.kept += 1
                continue
            if kind == "reversal":
                reversed_event = by_id.get(event.corrects_id or "")
                if reversed_event is None:
                    raise NotRecomputable(f"reverses {event.corrects_id}, which is not in the log")
                amount = -recomputed(reversed_event)
            else:
                amount = recomputed(event)
            recorded = _units(event.total_amount)
        except NotRecomputable as why:
            result.unrecomputable.append((event.id, str(why)))
            continue
        result.amounts[event.id] = _amount(amount)
        if amount != recorded:
            result.mismatches.append((event.id, kind, exact(event.total_amount), _amount(amount)))
    return result
