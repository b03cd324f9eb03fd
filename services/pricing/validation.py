"""Checks a price book must pass before it is published (pure)."""

from __future__ import annotations

from datetime import datetime

from tokenhub.contracts.events import ModelPrice, PeriodTiers, PriceBookPublished


class PriceBookInvalid(ValueError):
    pass


def validate_book(book: PriceBookPublished, currency: str, now: datetime, *, retroactive: bool) -> None:
    """Refuse what would price wrongly; the message names the model and the fault."""
    if book.currency != currency:
        raise PriceBookInvalid(f"book currency {book.currency} is not the settlement currency {currency}; "
                               "import foreign lists with an explicit rate")
    if book.effective_from < now and not retroactive:
        raise PriceBookInvalid(f"version {book.version} is effective from {book.effective_from.isoformat()}, "
                               "in the past; pass --retroactive to correct history")
    if not book.models:
        raise PriceBookInvalid("the book prices no model")
    seen: set[str] = set()
    for entry in book.models:
        if entry.model in seen:
            raise PriceBookInvalid(f"model {entry.model} is priced twice")
        seen.add(entry.model)
        _check_model(entry)


def _check_model(entry: ModelPrice) -> None:
    prices = dict(entry.unit_prices_per_million)
    for tier in entry.context_tiers:
        prices.update({f"{tier.name}.{name}": price for name, price in tier.unit_prices_per_million.items()})
    negative = sorted(name for name, price in prices.items() if price < 0)
    if negative:
        raise PriceBookInvalid(f"{entry.model}: negative price for {', '.join(negative)}")
    thresholds = [tier.above_input_tokens for tier in entry.context_tiers]
    if thresholds != sorted(set(thresholds)):
        raise PriceBookInvalid(f"{entry.model}: context tiers must have increasing, distinct thresholds, got {thresholds}")
    names = [tier.name for tier in entry.context_tiers]
    if len(set(names)) != len(names):
        raise PriceBookInvalid(f"{entry.model}: context tier names must be distinct, got {names}")
    empty = [tier.name for tier in entry.context_tiers if not tier.unit_prices_per_million]
    if empty:
        raise PriceBookInvalid(f"{entry.model}: context tier {empty[0]} sets no price")
    payers = [adjustment.bu for adjustment in entry.bu_adjustments]
    if len(set(payers)) != len(payers):
        raise PriceBookInvalid(f"{entry.model}: a business unit has two price adjustments")
    for adjustment in entry.bu_adjustments:
        if adjustment.factor < 0:
            raise PriceBookInvalid(f"{entry.model}: negative price factor for {adjustment.bu}")
    if entry.period_tiers is not None:
        _check_period_tiers(entry.model, entry.period_tiers)


def _check_period_tiers(model: str, schedule: PeriodTiers) -> None:
    if not schedule.tiers:
        raise PriceBookInvalid(f"{model}: period tiers are empty")
    bounds = [tier.up_to_tokens for tier in schedule.tiers]
    if bounds[-1] is not None:
        raise PriceBookInvalid(f"{model}: the last period tier must be open-ended")
    closed = bounds[:-1]
    if None in closed:
        raise PriceBookInvalid(f"{model}: only the last period tier may be open-ended")
    if any(lower >= upper for lower, upper in zip([0, *closed], closed, strict=False)):  # type: ignore[operator]
        raise PriceBookInvalid(f"{model}: period tiers overlap or are out of order: {closed}")
    for tier in schedule.tiers:
        if tier.unit_price_per_million < 0 or tier.flat_fee < 0:
            raise PriceBookInvalid(f"{model}: negative period tier price or fee")
