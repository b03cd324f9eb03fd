"""A LiteLLM price map becomes a book: Decimal all the way, per million Tokens,
context ranges as tiers, per-image and per-second prices through the
conversion table, and a foreign currency through the explicit rate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tokenhub.contracts.registry import ConversionRule, ConversionTable
from tokenhub.services.pricing.litellm import LiteLLMImportError, book_document

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_prices.json"
PRICE_MAP = json.loads(FIXTURE.read_text(), parse_float=Decimal)
TABLE = ConversionTable(version=4, effective_from=datetime(2026, 1, 1, tzinfo=UTC), rules=(
    ConversionRule(unit="image:*", token_class="image", tokens_per_unit=Decimal("1000")),
    ConversionRule(unit="video_second:*", token_class="video", tokens_per_unit=Decimal("4000")),
))


def _book(models: list[str] | None, rate: str = "7.2") -> dict:
    return book_document(PRICE_MAP, models, book_id="intl", version=1, effective_from=datetime(2026, 3, 1, tzinfo=UTC),
                         currency="CNY", rate=Decimal(rate), source_currency="USD", table=TABLE)


def test_per_token_costs_become_exact_prices_per_million_in_the_settlement_currency() -> None:
    book = _book(["qwen-max-intl"])
    assert (book["exchange_rate"], book["source_currency"], book["currency"]) == ("7.2", "USD", "CNY")
    model = book["models"][0]
    assert model["unit_prices_per_million"] == {"input": "11.520000000000", "output": "46.080000000000",
                                                "cache_read": "2.304000000000", "reasoning": "46.080000000000"}
    assert model["context_tiers"] == [{"name": "above-128k", "above_input_tokens": 128000, "unit_prices_per_million": {
        "input": "23.040000000000", "output": "92.160000000000"}}]


def test_tiered_pricing_ranges_become_context_tiers() -> None:
    model = _book(["qwen-plus-intl"], rate="1")["models"][0]
    assert model["unit_prices_per_million"]["input"] == "0.400000000000"
    assert model["unit_prices_per_million"]["reasoning"] == "4.000000000000"
    assert model["context_tiers"][0]["above_input_tokens"] == 256000
    assert model["context_tiers"][0]["unit_prices_per_million"] == {"input": "1.200000000000", "output": "3.600000000000"}


def test_per_image_and_per_second_prices_go_through_the_conversion_table() -> None:
    image, video = _book(["wan-image-intl", "wan-video-intl"])["models"]
    assert image["unit_prices_per_million"] == {"image": "144.000000000000"}  # 0.02 x 7.2 / 1000 Tokens x 1e6
    assert video["unit_prices_per_million"] == {"video": "180.000000000000"}  # 0.1 x 7.2 / 4000 x 1e6
    assert "conversion table v4" in image["note"] and "7.2" in image["note"]


def test_unknown_models_and_missing_conversion_are_refused() -> None:
    with pytest.raises(LiteLLMImportError, match="not in the price map"):
        _book(["gpt-unknown"])
    with pytest.raises(LiteLLMImportError, match="conversion rule"):
        book_document(PRICE_MAP, ["wan-image-intl"], book_id="x", version=1, effective_from=datetime(2026, 3, 1, tzinfo=UTC),
                      currency="CNY", rate=Decimal(1), source_currency=None, table=None)


def test_floats_are_refused() -> None:
    with pytest.raises(LiteLLMImportError, match="Decimal"):
        book_document(json.loads(FIXTURE.read_text()), ["qwen-max-intl"], book_id="x", version=1,
                      effective_from=datetime(2026, 3, 1, tzinfo=UTC), currency="CNY", rate=Decimal(1),
                      source_currency=None, table=TABLE)
