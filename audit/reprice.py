"""Pricing recomputed with the auditor's own arithmetic (invariant 4, docs/architecture.md):
each Priced from its TokenConsumed and the price book version it names, read
from pricing's stored rows, none of pricing's code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, Final

import asyncpg

from tokenhub.audit.balances import PricedFacts
from tokenhub.audit.log import exact, loads

QUANTUM: Final = Decimal("0.000000000001")
MILLION: Final = Decimal(1_000_000)


class NotRecomputable(ValueError):
    pass


def _fixed(value: Decimal) -> Decimal:
    with localcontext() as context:
        context.prec = 60
        return value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def recompute_lines(consumed: dict[str, Any], book: dict[str, Any]) -> list[tuple[str, int, Decimal, Decimal]]:
    """(class, Tokens, unit price per million, amount) for one consumption under
    one book version: base prices, replaced whole by the highest context tier the
    request's input exceeds, times the payer's factor, each fixed at 12 places
    half-even; amount = Tokens x price / 1e6 at 12 places half-even."""
    entry = next((model for model in book["models"] if model["model"] == consumed["model"]), None)
    if entry is None:
        raise NotRecomputable(f"book {book['book_id']} v{book['version']} has no price for {consumed['model']}")
    prices = dict(entry["unit_prices_per_million"])
    reached = [tier for tier in entry.get("context_tiers", ()) if consumed["request_input_tokens"] > tier["above_input_tokens"]]
    if reached:
        prices.update(max(reached, key=lambda tier: tier["above_input_tokens"])["unit_prices_per_million"])
    factor = next((Decimal(adjustment["factor"]) for adjustment in entry.get("bu_adjustments", ())
                   if adjustment["bu"] == consumed["payer_bu"]), None)
    lines = []
    with localcontext() as context:
        context.prec = 60
        for token_class, tokens in consumed["tokens"].items():
            if token_class not in prices:
                raise NotRecomputable(f"no {token_class} price for {consumed['model']}")
            unit = Decimal(prices[token_class])
            if factor is not None:
                unit = _fixed(unit * factor)
            lines.append((token_class, int(tokens), unit, _fixed(Decimal(tokens) * unit / MILLION)))
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


# Every TokenConsumed, from metering's record of what it produced (pricing keeps no copy).
SELECT_CONSUMED: Final = "select convert_from(payload, 'UTF8')::jsonb ->> 'id' as id, payload from metering.consumed"
SELECT_BOOKS: Final = "select book_id, version, payload from pricing.price_books"


async def load_pricing_inputs(connection: asyncpg.Connection) -> tuple[dict[str, dict], dict[tuple[str, int], dict]]:
    consumed = {row["id"]: loads(row["payload"]) for row in await connection.fetch(SELECT_CONSUMED)}
    books = {(row["book_id"], row["version"]): loads(row["payload"]) for row in await connection.fetch(SELECT_BOOKS)}
    return consumed, books


def reprice(events: Sequence[PricedFacts], consumed: dict[str, dict], books: dict[tuple[str, int], dict]) -> Repricing:
    """Every Priced's amount from its TokenConsumed and its book version;
    a reversal is the negative of what it reverses, recomputed the same way."""
    result = Repricing()
    by_id = {event.id: event for event in events}

    def recomputed(event: PricedFacts) -> Decimal:
        source = consumed.get(event.consumed_id)
        if source is None:
            raise NotRecomputable(f"no TokenConsumed {event.consumed_id} in metering's record")
        book = books.get((event.book_id or "", event.book_version or 0))
        if book is None:
            raise NotRecomputable(f"no price book {event.book_id} v{event.book_version}")
        return sum((line[3] for line in recompute_lines(source, book)), Decimal(0))

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
        except NotRecomputable as why:
            result.unrecomputable.append((event.id, str(why)))
            continue
        result.amounts[event.id] = amount
        if amount != exact(event.total_amount):
            result.mismatches.append((event.id, kind, exact(event.total_amount), amount))
    return result
