"""Build a price book from the LiteLLM model price map (pure).

Per-Token costs become prices per million Tokens; numbers are parsed straight
to Decimal (never float); a list in another currency is converted with an
explicit rate recorded in the book; per-image and per-second prices become
per-Token prices through the conversion table version in force, and each
model's note records how.

Context ranges follow LiteLLM's reading: a `*_above_<N>k_tokens` price or a
`tiered_pricing` range starting at N applies to the whole request when its
input exceeds N (`N < input`), which is this book's context tier
`above_input_tokens = N`. Reasoning is billed at the output price wherever the
map lists no reasoning price, in the base and in every tier.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from tokenhub.contracts.events import ContextTier, ModelPrice
from tokenhub.contracts.money import quantize
from tokenhub.contracts.registry import ConversionTable
from tokenhub.contracts.tokens import class_order

MILLION: Final = Decimal(1_000_000)
SPEC_ENTRY: Final = "sample_spec"  # the map's documentation entry, not a model

# LiteLLM key -> our token class, for per-Token costs.
PER_TOKEN_KEYS: Final = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
}
ABOVE_KEY: Final = re.compile(r"^(?P<base>.+)_above_(?P<count>\d+)(?P<thousands>k?)_tokens$")
# LiteLLM key -> conversion unit, for per-unit costs; the conversion rule names the class.
PER_UNIT_KEYS: Final = {
    "output_cost_per_image": "image",
    "output_cost_per_video_per_second": "video_second",
    "input_cost_per_audio_per_second": "audio_second",
}
# `*_cost_per_second` means seconds of what the model's mode measures; other
# pairs (a transcription's output seconds, a chat model's runtime) are left out.
PER_SECOND_KEYS: Final = {
    ("input_cost_per_second", "audio_transcription"): "audio_second",
    ("output_cost_per_second", "video_generation"): "video_second",
    ("output_cost_per_second", "audio_speech"): "audio_second",
}


class LiteLLMImportError(ValueError):
    """The price map cannot become a book as asked."""


@dataclass(frozen=True)
class LiteLLMImport:
    document: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    """Models left out (only when no model was named): model -> why."""
    ignored: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Cost keys of imported models that this book cannot express (batch, priority, per query...)."""


def _decimal(value: Any, key: str, model: str) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int) and not isinstance(value, bool):
        result = Decimal(value)
    else:
        raise LiteLLMImportError(f"{model}: {key} is not a number ({value!r}); parse the file with Decimal")
    if not result.is_finite() or result < 0:
        raise LiteLLMImportError(f"{model}: {key} must be a finite, non-negative cost, got {value}")
    return result


def _per_million(cost: Decimal, rate: Decimal) -> Decimal:
    return quantize(cost * MILLION * rate)


def _threshold(value: Any, model: str) -> int:
    number = _decimal(value, "tiered_pricing range", model)
    if number != number.to_integral_value():
        raise LiteLLMImportError(f"{model}: a tiered_pricing range starts at a whole number of tokens, got {value}")
    return int(number)


def _with_reasoning(prices: dict[str, Decimal], explicit_reasoning: Decimal | None) -> dict[str, Decimal]:
    if "reasoning" in prices:
        return prices
    if explicit_reasoning is not None:
        return {**prices, "reasoning": explicit_reasoning}
    if "output" in prices:
        return {**prices, "reasoning": prices["output"]}
    return prices


def model_price(model: str, entry: dict[str, Any], rate: Decimal,
                table: ConversionTable | None) -> tuple[ModelPrice, tuple[str, ...]]:
    """One model's prices in the settlement currency, and the cost keys left out."""
    if not isinstance(entry, dict):
        raise LiteLLMImportError(f"{model}: the entry is not an object")
    prices: dict[str, Decimal] = {}
    tiers: dict[int, dict[str, Decimal]] = {}
    notes: list[str] = []
    ignored: list[str] = []
    for key, value in entry.items():
        if key in PER_TOKEN_KEYS:
            prices[PER_TOKEN_KEYS[key]] = _per_million(_decimal(value, key, model), rate)
        elif (match := ABOVE_KEY.match(key)) and match["base"] in PER_TOKEN_KEYS:
            threshold = int(match["count"]) * (1000 if match["thousands"] else 1)
            tiers.setdefault(threshold, {})[PER_TOKEN_KEYS[match["base"]]] = _per_million(_decimal(value, key, model), rate)
        elif key in PER_UNIT_KEYS or (key, entry.get("mode")) in PER_SECOND_KEYS:
            unit = PER_UNIT_KEYS.get(key) or PER_SECOND_KEYS[(key, entry.get("mode"))]
            rule = table.rule_for(unit, None) if table else None
            if rule is None or table is None:
                raise LiteLLMImportError(f"{model}: {key} needs a conversion rule for {unit} or {unit}:* "
                                         "in the conversion table in force")
            cost = _decimal(value, key, model)
            prices[rule.token_class] = quantize(cost * rate * MILLION / rule.tokens_per_unit)
            notes.append(f"{rule.token_class}: {cost:f} per {unit.replace('_', ' ')} x rate {rate:f} "
                         f"/ {rule.tokens_per_unit:f} Tokens per {unit.replace('_', ' ')} "
                         f"(conversion table v{table.version})")
        elif "cost" in key and key != "tiered_pricing" and value is not None:
            ignored.append(key)
    explicit_reasoning = prices.get("reasoning")
    for tier in entry.get("tiered_pricing") or []:
        if not isinstance(tier, dict) or not isinstance(tier.get("range"), list) or len(tier["range"]) != 2:
            raise LiteLLMImportError(f"{model}: every tiered_pricing entry needs a range [from, to]")
        start = _threshold(tier["range"][0], model)
        tier_prices = {PER_TOKEN_KEYS[key]: _per_million(_decimal(value, key, model), rate)
                       for key, value in tier.items() if key in PER_TOKEN_KEYS}
        if start == 0:
            prices.update(tier_prices)
        else:
            tiers.setdefault(start, {}).update(tier_prices)
    prices = dict(sorted(_with_reasoning(prices, explicit_reasoning).items(), key=lambda item: class_order(item[0])))
    if not prices:
        raise LiteLLMImportError(f"{model}: no per-Token, per-image or per-second price in the map")
    context_tiers = tuple(
        ContextTier(name=f"above-{threshold // 1000}k" if threshold % 1000 == 0 else f"above-{threshold}",
                    above_input_tokens=threshold, unit_prices_per_million=dict(sorted(
                        _with_reasoning(tier_prices, None).items(), key=lambda item: class_order(item[0]))))
        for threshold, tier_prices in sorted(tiers.items())
    )
    if rate != 1:
        notes.append(f"per-Token costs x {rate:f} per unit of the list's currency")
    price = ModelPrice(model=model, unit_prices_per_million=prices, context_tiers=context_tiers,
                       note="; ".join(["imported from a LiteLLM price map", *notes]))
    return price, tuple(sorted(ignored))


def import_book(price_map: dict[str, Any], models: Iterable[str] | None, *, book_id: str, version: int,
                effective_from: datetime, currency: str, rate: Decimal, source_currency: str | None,
                table: ConversionTable | None) -> LiteLLMImport:
    """A price book document (what `pricebook publish` reads) for the chosen models.
    Named models must all import; without names, models that cannot are skipped and listed."""
    if not rate.is_finite() or rate <= 0:
        raise LiteLLMImportError(f"the rate must be positive, got {rate}")
    if source_currency in (None, currency) and rate != 1:
        raise LiteLLMImportError(f"a rate of {rate} needs the list's currency (--source-currency), "
                                 f"other than {currency}, to be recorded in the book")
    if source_currency not in (None, currency) and rate == 1:
        raise LiteLLMImportError(f"the list is in {source_currency}: give --rate to convert to {currency}")
    names = list(models) if models else [name for name in price_map if name != SPEC_ENTRY]
    missing = [name for name in names if name not in price_map]
    if missing:
        raise LiteLLMImportError(f"not in the price map: {', '.join(missing)}")
    prices: list[ModelPrice] = []
    skipped: dict[str, str] = {}
    ignored: dict[str, tuple[str, ...]] = {}
    for name in names:
        try:
            price, left_out = model_price(name, price_map[name], rate, table)
        except (LiteLLMImportError, ValueError) as error:
            if models:
                raise LiteLLMImportError(str(error)) from None
            skipped[name] = str(error).splitlines()[0]
            continue
        prices.append(price)
        if left_out:
            ignored[name] = left_out
    if not prices:
        raise LiteLLMImportError("no model of the map could be imported")
    foreign = source_currency not in (None, currency)
    document = {
        "book_id": book_id,
        "version": version,
        "effective_from": effective_from.isoformat(),
        "currency": currency,
        "models": [price.model_dump(mode="json", exclude_none=True) for price in prices],
    }
    if foreign:
        document |= {"exchange_rate": f"{rate:f}", "source_currency": source_currency}
    return LiteLLMImport(document, skipped, ignored)


def book_document(price_map: dict[str, Any], models: Iterable[str] | None, **options: Any) -> dict[str, Any]:
    return import_book(price_map, models, **options).document
