"""Pricing's pure core: context tiers at their boundary, BU factors, effective
dating, parking reasons and period tiers against hand-computed tables."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import PeriodTier, PeriodTiers
from tokenhub.contracts.pricebook import BookIndex, period_tier_charge
from tokenhub.services.pricing.domain import (
    Unpriceable,
    first_copies,
    in_settlement_currency,
    price,
    price_in_force,
    price_or_park,
)
from tests.contract.examples import BOOK, CONSUMED

D = Decimal


def _consumed(input_tokens: int, output_tokens: int = 0, payer: str = "quark", **extra: int):
    tokens = {"input": input_tokens, "output": output_tokens, **extra}
    tokens = {name: value for name, value in tokens.items() if value}
    return CONSUMED.model_copy(update={"tokens": tokens, "payer_bu": payer,
                                       "request_input_tokens": input_tokens + extra.get("cache_read", 0)})


def test_at_the_threshold_the_base_price_applies_and_one_more_token_takes_the_tier() -> None:
    at = price(_consumed(128_000, 1_000), BOOK)
    above = price(_consumed(128_001, 1_000), BOOK)
    assert at.context_tier is None
    assert at.total_amount == D("0.3072") + D("0.0096")  # 128000 x 2.4 + 1000 x 9.6, per million
    assert above.context_tier == "long-context"
    assert above.total_amount == D("128001") * D("4.8") / 10**6 + D("1000") * D("19.2") / 10**6


def test_cache_reads_count_towards_the_context_tier() -> None:
    priced = price(_consumed(100_000, 0, cache_read=30_000), BOOK)
    assert priced.context_tier == "long-context"
    # The tier defines no cache_read price: the base one applies to that class.
    assert {line.token_class: line.unit_price_per_million for line in priced.lines} == {
        "input": D("4.8"), "cache_read": D("0.48")}


def test_a_bu_factor_scales_unit_prices_for_that_payer_only() -> None:
    discounted = price(_consumed(100_000, payer="taobao-tmall"), BOOK)
    full = price(_consumed(100_000, payer="quark"), BOOK)
    assert discounted.price_factor == D("0.9") and full.price_factor is None
    assert (discounted.total_amount, full.total_amount) == (D("0.216"), D("0.24"))


def test_the_same_input_gives_identical_bytes() -> None:
    assert canonical_json(price(CONSUMED, BOOK)) == canonical_json(price(CONSUMED, BOOK))


def test_effective_dating_by_event_time() -> None:
    later = BOOK.model_copy(update={"version": 2, "effective_from": CONSUMED.event_time,
                                    "models": (BOOK.models[0].model_copy(update={"bu_adjustments": ()}),)})
    index = BookIndex.of([BOOK, later])
    just_before = CONSUMED.model_copy(update={"event_time": CONSUMED.event_time - timedelta(microseconds=1)})
    assert price_in_force(just_before, index).book_version == 1
    assert price_in_force(CONSUMED, index).book_version == 2
    too_early = CONSUMED.model_copy(update={"event_time": BOOK.effective_from - timedelta(microseconds=1)})
    with pytest.raises(Unpriceable, match="no price book"):
        price_in_force(too_early, index)


def test_unknown_model_or_class_is_unpriceable() -> None:
    with pytest.raises(Unpriceable, match="no price for"):
        price(CONSUMED.model_copy(update={"model": "qwen-unknown"}), BOOK)
    with pytest.raises(Unpriceable, match="no image price"):
        price(_consumed(10, image=1000), BOOK)


GRADUATED = PeriodTiers(mode="graduated", tiers=(
    PeriodTier(up_to_tokens=1_000_000, unit_price_per_million=D("2"), flat_fee=D("10")),
    PeriodTier(up_to_tokens=5_000_000, unit_price_per_million=D("1.5"), flat_fee=D("5")),
    PeriodTier(up_to_tokens=None, unit_price_per_million=D("1"), flat_fee=D("0")),
))
VOLUME = GRADUATED.model_copy(update={"mode": "volume"})


@pytest.mark.parametrize(("total", "graduated", "volume"), [
    (0, "10", "10"),                     # the first tier's flat fee even at zero
    (1, "10.000002", "10.000002"),
    (1_000_000, "12", "12"),             # (0, 1M] is the first tier
    (1_000_001, "17.0000015", "6.5000015"),
    (5_000_000, "23", "12.5"),           # 2 + 10 + 4 x 1.5 + 5 ; volume 5 x 1.5 + 5
    (5_000_001, "23.000001", "5.000001"),
    (10_000_000, "28", "10"),            # 2 + 10 + 6 + 5 + 5 x 1 ; volume 10 x 1
])
def test_period_tiers_match_hand_computed_tables(total: int, graduated: str, volume: str) -> None:
    assert period_tier_charge(total, GRADUATED) == D(graduated)
    assert period_tier_charge(total, VOLUME) == D(volume)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12))
def test_graduated_charge_never_decreases_with_usage(first: int, second: int) -> None:
    low, high = sorted((first, second))
    assert period_tier_charge(low, GRADUATED) <= period_tier_charge(high, GRADUATED)


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_priced_lines_sum_to_the_total(input_tokens: int, output_tokens: int) -> None:
    priced = price(_consumed(input_tokens, output_tokens), BOOK) if input_tokens or output_tokens else None
    if priced is not None:
        assert sum(line.amount for line in priced.lines) == priced.total_amount
        assert sum(line.tokens for line in priced.lines) == priced.total_tokens == input_tokens + output_tokens


def test_a_batch_prices_what_a_book_prices_parks_the_rest_and_keeps_each_first_copy() -> None:
    unknown = CONSUMED.model_copy(update={"id": uuid.uuid4(), "model": "no-such-model"})
    received = [(CONSUMED, b"first"), (unknown, b"other"), (CONSUMED, b"second")]
    assert first_copies(received) == [(CONSUMED, b"first"), (unknown, b"other")]
    priced, parked = price_or_park([CONSUMED, unknown], BookIndex.of([BOOK]))
    assert priced == [price(CONSUMED, BOOK)]
    assert [(event.id, reason.startswith("no price book prices no-such-model")) for event, reason in parked] == [
        (unknown.id, True)]
    assert price_or_park([CONSUMED], BookIndex.of([])) == ([], [(CONSUMED, f"no price book prices qwen-max at "
                                                                          f"{CONSUMED.event_time.isoformat()}")])


def test_a_book_in_another_currency_is_refused_with_its_reason() -> None:
    usd = BOOK.model_copy(update={"currency": "USD", "version": 2})
    accepted, refused = in_settlement_currency([(BOOK, b"cny"), (usd, b"usd")], "CNY")
    assert accepted == [(BOOK, b"cny")]
    assert refused == [(usd, b"usd", "book internal v2 is in USD; the settlement currency is CNY "
                                     "(import a foreign list with an explicit rate)")]
    assert in_settlement_currency([(BOOK, b"cny")], "USD")[0] == []
