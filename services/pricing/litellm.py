"""Build a price book from the LiteLLM model price map (pure).

Per-Token costs become prices per million Tokens; numbers are parsed straight
to Decimal (never float); a list in another currency is converted with an
explicit rate recorded in the book; per-image and per-second prices become
per-Token prices through the conversion table version in force, and each
model's note records how.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from tokenhub.contracts.events import ContextTier, ModelPrice
from tokenhub.contracts.money import quantize
from tokenhub.contracts.registry import ConversionTable

MILLION: Final = Decimal(1_000_000)

# LiteLLM key -> our token class, for per-Token costs.
PER_TOKEN_KEYS: Final = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
}
ABOVE_KEY: Final = re.compile(r"^(?P<base>.+)_above_(?P<thousands>\d+)k_tokens$")
# LiteLLM key -> (conversion unit, our class) for per-unit costs.
PER_UNIT_KEYS: Final = {
    "output_cost_per_image": ("image", "image"),
    "output_cost_per_video_per_second": ("video_second", "video"),
    "output_cost_per_second": ("video_second", "video"),
    "input_cost_per_audio_per_second": ("audio_second", "audio"),
}


class LiteLLMImportError(ValueError):
    """The price map cannot become a book as asked."""


def _per_million(cost: Decimal, rate: Decimal) -> Decimal:
    return quantize(cost * MILLION * rate)


def _decimal(value: Any, key: str, model: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise LiteLLMImportError(f"{model}: {key} is not a number ({value!r}); parse the file with Decimal")


def model_price(model: str, entry: dict[str, Any], rate: Decimal, table: ConversionTable | None) -> ModelPrice:
    prices: dict[str, Decimal] = {}
    tiers: dict[int, dict[str, Decimal]] = {}
    notes: list[str] = []
    for key, value in entry.items():
        if key in PER_TOKEN_KEYS:
            prices[PER_TOKEN_KEYS[key]] = _per_million(_decimal(value, key, model), rate)
        elif (match := ABOVE_KEY.match(key)) and match["base"] in PER_TOKEN_KEYS:
            threshold = int(match["thousands"]) * 1000
            tiers.setdefault(threshold, {})[PER_TOKEN_KEYS[match["base"]]] = _per_million(_decimal(value, key, model), rate)
        elif key in PER_UNIT_KEYS:
            unit, token_class = PER_UNIT_KEYS[key]
            rule = table.rule_for(unit, None) if table else None
            if rule is None:
                raise LiteLLMImportError(f"{model}: {key} needs a conversion rule for {unit}:* in the table in force")
            prices[token_class] = quantize(_decimal(value, key, model) * rate * MILLION / rule.tokens_per_unit)
            notes.append(f"{token_class}: {value} per {unit.replace('_', ' ')} / {rule.tokens_per_unit} Tokens "
                         f"(conversion table v{table.version})")  # type: ignore[union-attr]
    for tier in entry.get("tiered_pricing") or []:
        start = int(tier["range"][0])
        tier_prices = {PER_TOKEN_KEYS[key]: _per_million(_decimal(value, key, model), rate)
                       for key, value in tier.items() if key in PER_TOKEN_KEYS}
        if start == 0:
            prices.update(tier_prices)
        else:
            tiers.setdefault(start, {}).update(tier_prices)
    if "output" in prices and "reasoning" not in prices:
        prices["reasoning"] = prices["output"]  # reasoning is billed as output unless listed
    if not prices:
        raise LiteLLMImportError(f"{model}: no per-Token, per-image or per-second price in the map")
    context_tiers = tuple(
        ContextTier(name=f"above-{threshold // 1000}k", above_input_tokens=threshold, unit_prices_per_million=tier_prices)
        for threshold, tier_prices in sorted(tiers.items())
    )
    if rate != 1:
        notes.append(f"converted at {rate} per unit of the list's currency")
    return ModelPrice(model=model, unit_prices_per_million=prices, context_tiers=context_tiers,
                      note="; ".join(notes) or None)


def book_document(price_map: dict[str, Any], models: Iterable[str] | None, *, book_id: str, version: int,
                  effective_from: datetime, currency: str, rate: Decimal, source_currency: str | None,
                  table: ConversionTable | None) -> dict[str, Any]:
    """A price book document (what `pricebook publish` reads) for the chosen models."""
    names = list(models) if models else [name for name in price_map if name != "sample_spec"]
    missing = [name for name in names if name not in price_map]
    if missing:
        raise LiteLLMImportError(f"not in the price map: {', '.join(missing)}")
    prices = [model_price(name, price_map[name], rate, table) for name in names]
    return {
        "book_id": book_id,
        "version": version,
        "effective_from": effective_from.isoformat(),
        "currency": currency,
        "exchange_rate": f"{rate:f}" if source_currency else None,
        "source_currency": source_currency,
        "models": [price.model_dump(mode="json", exclude_none=True) for price in prices],
    }
