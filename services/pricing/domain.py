"""Pricing's functional core: a Priced event is a pure function of its
TokenConsumed and the price book version in force at its event time
(docs/architecture.md decision 6). No I/O, clock or logging here."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol, TypeVar

from tokenhub.contracts.events import (
    ContextTier,
    ModelPrice,
    Priced,
    PricedLine,
    PriceBookPublished,
    unchecked,
)
from tokenhub.contracts.ids import priced_id
from tokenhub.contracts.money import line_amount, quantize
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.tokens import class_order


class Consumption(Protocol):
    """What pricing reads of a consumption: a TokenConsumed as received, or one
    rebuilt from the Priced that recorded it (`reprice.consumption_of`)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def event_time(self) -> datetime: ...
    @property
    def payer_bu(self) -> str: ...
    @property
    def consumer_bu(self) -> str: ...
    @property
    def provider_bu(self) -> str: ...
    @property
    def app(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def tokens(self) -> Mapping[str, int]: ...
    @property
    def request_input_tokens(self) -> int: ...


ConsumptionT = TypeVar("ConsumptionT", bound=Consumption)


class Unpriceable(Exception):
    """No price applies; the consumption is parked until one does."""


def context_tier(price: ModelPrice, request_input_tokens: int) -> ContextTier | None:
    """The highest tier whose threshold the request's whole input exceeds."""
    reached = [tier for tier in price.context_tiers if request_input_tokens > tier.above_input_tokens]
    return max(reached, key=lambda tier: tier.above_input_tokens, default=None)


def price_factor(price: ModelPrice, payer_bu: str) -> Decimal | None:
    for adjustment in price.bu_adjustments:
        if adjustment.bu == payer_bu:
            return adjustment.factor
    return None


def price(consumed: Consumption, book: PriceBookPublished) -> Priced:
    """Price one consumption with one book version.

    The context tier reached by the request's whole input reprices the whole
    request; a class the tier does not list keeps its base price. A payer's
    factor scales each unit price, fixed at twelve places, before the lines are
    computed, so every line stays Tokens x unit price and the lines sum to the total.
    """
    entry = book.price_for(consumed.model)
    if entry is None:
        raise Unpriceable(f"book {book.book_id} v{book.version} has no price for {consumed.model}")
    tier = context_tier(entry, consumed.request_input_tokens)
    unit_prices = dict(entry.unit_prices_per_million)
    if tier is not None:
        unit_prices.update(tier.unit_prices_per_million)
    factor = price_factor(entry, consumed.payer_bu)
    lines = []
    # Lines in the classes' canonical order, whatever order the consumption lists them in.
    for token_class, tokens in sorted(consumed.tokens.items(), key=_by_class):
        if token_class not in unit_prices:
            raise Unpriceable(f"book {book.book_id} v{book.version} has no {token_class} price for {consumed.model}")
        unit_price = unit_prices[token_class] if factor is None else quantize(unit_prices[token_class] * factor)
        lines.append(unchecked(PricedLine, {"token_class": token_class, "tokens": tokens,
                                            "unit_price_per_million": unit_price,
                                            "amount": line_amount(tokens, unit_price)}))
    # Built without validation: every value is a validated input or computed here
    # from one, at the fixed scale; tests hold the result equal to the validated model.
    return unchecked(Priced, {
        "id": priced_id(consumed.id, book.book_id, book.version),
        "schema_version": 1,
        "event_time": consumed.event_time,
        "cause_id": str(consumed.id),
        "type": "tokens.priced",
        "kind": "charge",
        "consumed_id": consumed.id,
        "corrects_id": None,
        "payer_bu": consumed.payer_bu,
        "consumer_bu": consumed.consumer_bu,
        "provider_bu": consumed.provider_bu,
        "app": consumed.app,
        "model": consumed.model,
        "book_id": book.book_id,
        "book_version": book.version,
        "context_tier": tier.name if tier else None,
        "price_factor": factor,
        "currency": book.currency,
        "lines": tuple(lines),
        "total_tokens": sum(line.tokens for line in lines),
        "total_amount": sum((line.amount for line in lines), Decimal(0)),
        "invoice_id": None,
    })


def _by_class(item: tuple[str, int]) -> tuple[int, str]:
    return class_order(item[0])


def price_in_force(consumed: Consumption, books: BookIndex) -> Priced:
    book = books.in_force(consumed.model, consumed.event_time)
    if book is None:
        raise Unpriceable(f"no price book prices {consumed.model} at {consumed.event_time.isoformat()}")
    return price(consumed, book)


def first_copies(received: Sequence[tuple[ConsumptionT, bytes]]) -> list[tuple[ConsumptionT, bytes]]:
    """Each consumption once, as first received in the batch."""
    first: dict[uuid.UUID, tuple[ConsumptionT, bytes]] = {}
    for event, value in received:
        first.setdefault(event.id, (event, value))
    return list(first.values())


def price_or_park(consumed: Sequence[ConsumptionT], books: BookIndex) -> tuple[list[Priced], list[tuple[ConsumptionT, str]]]:
    """Each consumption priced with the version in force, or parked with the reason it cannot be."""
    priced: list[Priced] = []
    parked: list[tuple[ConsumptionT, str]] = []
    for event in consumed:
        try:
            priced.append(price_in_force(event, books))
        except Unpriceable as reason:
            parked.append((event, str(reason)))
    return priced, parked


def in_settlement_currency(books: Sequence[tuple[PriceBookPublished, bytes]], currency: str
                           ) -> tuple[list[tuple[PriceBookPublished, bytes]], list[tuple[PriceBookPublished, bytes, str]]]:
    """(books in the deployment's settlement currency, the others with the reason
    they are refused): a price in another currency would be posted as if it were
    in this one (docs/architecture.md decision 4)."""
    accepted: list[tuple[PriceBookPublished, bytes]] = []
    refused: list[tuple[PriceBookPublished, bytes, str]] = []
    for book, value in books:
        if book.currency == currency:
            accepted.append((book, value))
        else:
            refused.append((book, value, f"book {book.book_id} v{book.version} is in {book.currency}; the settlement "
                                         f"currency is {currency} (import a foreign list with an explicit rate)"))
    return accepted, refused
