"""Price books as every reader needs them: the version in force at a time, and
the charge of a period total under a book's period tiers (docs/architecture.md decisions
6 and 7). Pricing prices each consumption with the version in force; invoicing
applies the period tiers at close. Pure: no I/O, clock or logging."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine, PeriodTiers, PriceBookPublished
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.money import line_amount, quantize


@dataclass(frozen=True)
class BookIndex:
    """Every published version, to find the one in force at a time."""

    versions: tuple[PriceBookPublished, ...]

    @classmethod
    def of(cls, books: Iterable[PriceBookPublished]) -> BookIndex:
        return cls(tuple(sorted(books, key=lambda book: (book.effective_from, book.version, book.book_id))))

    def in_force(self, model: str, moment: datetime) -> PriceBookPublished | None:
        """The latest version effective at `moment` that prices `model`."""
        chosen = None
        for book in self.versions:
            if book.effective_from > moment:
                break
            if book.price_for(model) is not None:
                chosen = book
        return chosen


def period_tier_charge(period_total_tokens: int, schedule: PeriodTiers) -> Decimal:
    """The charge for a period total under graduated or volume tiers (decision 7).

    Tiers cover (from, to], the first from 0, the last open-ended. Graduated:
    each unit at its own tier's price plus every reached tier's flat fee (the
    first tier's even at zero). Volume: all units at the one tier the total
    falls in, plus that tier's flat fee.
    """
    if period_total_tokens < 0:
        raise ValueError("a period total cannot be negative")
    tiers = schedule.tiers
    if schedule.mode == "volume":
        for tier in tiers:
            if tier.up_to_tokens is None or period_total_tokens <= tier.up_to_tokens:
                return quantize(line_amount(period_total_tokens, tier.unit_price_per_million) + tier.flat_fee)
        raise ValueError("the last tier must be open-ended")
    charge = Decimal(0)
    lower = 0
    for index, tier in enumerate(tiers):
        if index > 0 and period_total_tokens <= lower:
            break
        upper = tier.up_to_tokens
        in_tier = max(0, (period_total_tokens if upper is None else min(period_total_tokens, upper)) - lower)
        charge += line_amount(in_tier, tier.unit_price_per_million) + tier.flat_fee
        if upper is None:
            break
        lower = upper
    return quantize(charge)


def book_from_document(document: Mapping[str, Any], *, actor: str, reason: str, retroactive: bool,
                       published_at: datetime) -> PriceBookPublished:
    """A price book version from its document (YAML or JSON: book_id, version,
    effective_from, currency, models), with a deterministic id per book and
    version; the document's own `reason` wins over `reason`."""
    book_id = str(document.get("book_id", ""))
    version = document.get("version")
    return PriceBookPublished.model_validate({
        **document,
        "id": str(derive_id("pricebook", book_id, str(version))),
        "event_time": document.get("effective_from"),
        "cause_id": f"{actor}:{book_id}:{version}",
        "retroactive": retroactive,
        "actor": actor,
        "reason": document.get("reason", reason),
        "published_at": published_at,
    })


@dataclass(frozen=True)
class PriceSource:
    """Where a unit price came from: a book version, and the context tier whose
    price it is (None: the model's base price)."""

    book_id: str
    version: int
    context_tier: str | None

    def label(self) -> str:
        return f"{self.book_id} v{self.version}, " + (f"{self.context_tier} tier" if self.context_tier else "base price")


def unit_prices(book: PriceBookPublished, model: str, payer_bu: str) -> list[tuple[str | None, str, Decimal]]:
    """Every unit price a book charges `payer_bu` for `model`: (context tier or
    None for the base, Token class, price per million), the payer's adjustment applied
    as pricing applies it (the factor times the price, fixed at twelve places)."""
    entry = book.price_for(model)
    if entry is None:
        return []
    factor = next((adjustment.factor for adjustment in entry.bu_adjustments if adjustment.bu == payer_bu), None)

    def adjusted(price: Decimal) -> Decimal:
        return price if factor is None else quantize(price * factor)

    found: list[tuple[str | None, str, Decimal]] = [
        (None, token_class, adjusted(price)) for token_class, price in entry.unit_prices_per_million.items()]
    for tier in entry.context_tiers:
        found += [(tier.name, token_class, adjusted(price)) for token_class, price in tier.unit_prices_per_million.items()]
    return found


def price_source(books: BookIndex, *, model: str, token_class: str, unit_price: Decimal, payer_bu: str,
                 before: datetime) -> PriceSource | None:
    """The latest book version effective before `before` (a period's end) that
    charges `payer_bu` this unit price for `model`'s `token_class`, and the tier
    the price is in; None when no version does (the line then names neither)."""
    for book in reversed(books.versions):
        if book.effective_from >= before:
            continue
        tiers = [tier for tier, name, price in unit_prices(book, model, payer_bu)
                 if name == token_class and price == unit_price]
        if tiers:
            return PriceSource(book.book_id, book.version, None if None in tiers else tiers[0])
    return None


def line_source(invoice: InvoiceIssued, line: InvoiceLine, books: BookIndex) -> PriceSource | None:
    """Which book version (and context tier) priced an invoice line."""
    if line.kind == "period_tier":
        book = books.in_force(line.model, invoice.period_end - timedelta(microseconds=1))
        return PriceSource(book.book_id, book.version, None) if book else None
    if line.token_class is None or line.unit_price_per_million is None:
        return None
    return price_source(books, model=line.model, token_class=line.token_class, unit_price=line.unit_price_per_million,
                        payer_bu=invoice.payer_bu, before=invoice.period_end)
