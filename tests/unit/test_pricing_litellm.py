"""A LiteLLM price map becomes a book: Decimal all the way, per million Tokens,
context ranges as tiers, per-image and per-second prices through the
conversion table, and a foreign currency through the explicit rate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tokenhub.contracts.events import PriceBookPublished, TokenConsumed
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.registry import ConversionRule, ConversionTable
from tokenhub.services.pricing.domain import price
from tokenhub.services.pricing.litellm import LiteLLMImportError, book_document, import_book
from tests.contract.examples import CONSUMED

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_prices.json"
PRICE_MAP = json.loads(FIXTURE.read_text(), parse_float=Decimal)
TABLE = ConversionTable(version=4, effective_from=datetime(2026, 1, 1, tzinfo=UTC), rules=(
    ConversionRule(unit="image:*", token_class="image", tokens_per_unit=Decimal("1000")),
    ConversionRule(unit="video_second:*", token_class="video", tokens_per_unit=Decimal("4000")),
))
EFFECTIVE = datetime(2026, 3, 1, tzinfo=UTC)
D = Decimal


def _import(models: list[str] | None, rate: str = "7.2", source: str | None = "USD", table=TABLE):  # noqa: ANN001, ANN202
    return import_book(PRICE_MAP, models, book_id="intl", version=1, effective_from=EFFECTIVE, currency="CNY",
                       rate=Decimal(rate), source_currency=source, table=table)


def _book(models: list[str] | None, rate: str = "7.2", source: str | None = "USD") -> dict:
    return _import(models, rate, source).document


def test_per_token_costs_become_exact_prices_per_million_in_the_settlement_currency() -> None:
    book = _book(["qwen-max-intl"])
    assert (book["exchange_rate"], book["source_currency"], book["currency"]) == ("7.2", "USD", "CNY")
    model = book["models"][0]
    assert model["unit_prices_per_million"] == {"input": "11.520000000000", "output": "46.080000000000",
                                                "cache_read": "2.304000000000", "reasoning": "46.080000000000"}
    assert model["context_tiers"] == [{"name": "above-128k", "above_input_tokens": 128000, "unit_prices_per_million": {
        "input": "23.040000000000", "output": "92.160000000000", "reasoning": "92.160000000000"}}]
    assert "x 7.2 per unit of the list's currency" in model["note"]


def test_cache_writes_and_every_above_key_become_one_tier() -> None:
    imported = _import(["claude-sonnet-4-intl"])
    model = imported.document["models"][0]
    assert model["unit_prices_per_million"] == {
        "input": "21.600000000000", "output": "108.000000000000", "cache_write": "27.000000000000",
        "cache_read": "2.160000000000", "reasoning": "108.000000000000"}
    assert model["context_tiers"] == [{"name": "above-200k", "above_input_tokens": 200000, "unit_prices_per_million": {
        "input": "43.200000000000", "output": "162.000000000000", "cache_write": "54.000000000000",
        "cache_read": "4.320000000000", "reasoning": "162.000000000000"}}]
    # What the book cannot express is named, never dropped silently.
    assert imported.ignored == {"claude-sonnet-4-intl": (
        "input_cost_per_token_batches", "output_cost_per_token_batches", "search_context_cost_per_query")}


def test_tiered_pricing_ranges_become_context_tiers() -> None:
    book = _book(["qwen-plus-intl"], rate="1", source=None)
    assert "exchange_rate" not in book and "source_currency" not in book
    model = book["models"][0]
    assert model["unit_prices_per_million"] == {"input": "0.400000000000", "output": "1.200000000000",
                                                "reasoning": "4.000000000000"}
    assert model["context_tiers"] == [{"name": "above-256k", "above_input_tokens": 256000, "unit_prices_per_million": {
        "input": "1.200000000000", "output": "3.600000000000", "reasoning": "3.600000000000"}}]


def test_per_image_and_per_second_prices_go_through_the_conversion_table() -> None:
    image, video = _book(["wan-image-intl", "wan-video-intl"])["models"]
    assert image["unit_prices_per_million"] == {"image": "144.000000000000"}  # 0.02 x 7.2 / 1000 Tokens x 1e6
    assert video["unit_prices_per_million"] == {"video": "180.000000000000"}  # 0.1 x 7.2 / 4000 x 1e6
    assert "image: 0.02 per image x rate 7.2 / 1000 Tokens per image (conversion table v4)" in image["note"]
    assert "video: 0.1 per video second x rate 7.2 / 4000 Tokens per video second (conversion table v4)" in video["note"]


def test_per_second_keys_follow_the_models_mode() -> None:
    table = TABLE.model_copy(update={"rules": (*TABLE.rules, ConversionRule(
        unit="audio_second", token_class="audio", tokens_per_unit=Decimal(25)))})
    imported = _import(["whisper-intl"], table=table)
    assert imported.document["models"][0]["unit_prices_per_million"] == {"audio": "28.800000000000"}  # 1e-4x7.2/25x1e6
    assert imported.ignored == {"whisper-intl": ("output_cost_per_second",)}  # a transcription's output is text


def test_without_named_models_what_cannot_import_is_skipped_and_listed() -> None:
    imported = _import(None)  # the table has no audio rule
    assert [model["model"] for model in imported.document["models"]] == [
        "qwen-max-intl", "qwen-plus-intl", "claude-sonnet-4-intl", "wan-image-intl", "wan-video-intl"]
    assert list(imported.skipped) == ["whisper-intl"] and "audio_second" in imported.skipped["whisper-intl"]


def test_imported_book_prices_usage_exactly_at_the_range_boundary() -> None:
    document = _book(["qwen-max-intl"])
    book = PriceBookPublished.model_validate({**document, "id": derive_id("pricebook", "intl", "1"),
                                              "event_time": EFFECTIVE, "cause_id": "tests", "actor": "tests",
                                              "reason": "import", "published_at": EFFECTIVE})
    def consumed(input_tokens: int) -> TokenConsumed:
        return CONSUMED.model_copy(update={"model": "qwen-max-intl", "payer_bu": "quark", "request_input_tokens":
                                           input_tokens, "tokens": {"input": input_tokens, "output": 1_000}})
    at, above = price(consumed(128_000), book), price(consumed(128_001), book)
    assert (at.context_tier, at.total_amount) == (None, D("1.474560000000") + D("0.046080000000"))
    assert (above.context_tier, above.total_amount) == ("above-128k", D("2.949143040000") + D("0.092160000000"))


def test_rates_and_currencies_must_agree() -> None:
    with pytest.raises(LiteLLMImportError, match="--rate"):
        _import(["qwen-max-intl"], rate="1", source="USD")
    with pytest.raises(LiteLLMImportError, match="--source-currency"):
        _import(["qwen-max-intl"], rate="7.2", source=None)
    with pytest.raises(LiteLLMImportError, match="positive"):
        _import(["qwen-max-intl"], rate="0")


def test_unknown_models_and_missing_conversion_are_refused() -> None:
    with pytest.raises(LiteLLMImportError, match="not in the price map"):
        _book(["gpt-unknown"])
    with pytest.raises(LiteLLMImportError, match="conversion rule"):
        _import(["wan-image-intl"], rate="1", source=None, table=None)


def test_floats_and_negative_costs_are_refused() -> None:
    with pytest.raises(LiteLLMImportError, match="Decimal"):
        book_document(json.loads(FIXTURE.read_text()), ["qwen-max-intl"], book_id="x", version=1,
                      effective_from=EFFECTIVE, currency="CNY", rate=Decimal(1), source_currency=None, table=TABLE)
    negative = {"m": {"input_cost_per_token": Decimal("-1e-6")}}
    with pytest.raises(LiteLLMImportError, match="non-negative"):
        book_document(negative, ["m"], book_id="x", version=1, effective_from=EFFECTIVE, currency="CNY",
                      rate=Decimal(1), source_currency=None, table=None)
