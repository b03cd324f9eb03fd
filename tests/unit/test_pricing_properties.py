"""Properties of pricing's pure core, checked by hypothesis against arithmetic
done by hand: identical bytes for the same input, lines that sum to the total,
exact amounts on both sides of every context-tier threshold, period tiers that
match a unit-by-unit reference, and effective dating by event time."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import (
    ContextTier,
    ModelPrice,
    PeriodTier,
    PeriodTiers,
    PriceBookPublished,
    Priced,
    TokenConsumed,
    decode,
)
from tokenhub.contracts.money import line_amount
from tokenhub.contracts.pricebook import BookIndex, period_tier_charge
from tokenhub.services.pricing.domain import price, price_in_force
from tests.contract.examples import BOOK, CONSUMED

D = Decimal
MILLION = D(1_000_000)
BASE = {"input": D("2.4"), "cache_read": D("0.48"), "cache_write": D("3"), "output": D("9.6"), "reasoning": D("9.6"),
        "image": D("0.25")}
# Three thresholds as a long-context model publishes them: (0, 32k], (32k, 128k], (128k, 256k], above.
TIERS = (
    ContextTier(name="above-32k", above_input_tokens=32_000, unit_prices_per_million={"input": D("4"), "output": D("16")}),
    ContextTier(name="above-128k", above_input_tokens=128_000,
                unit_prices_per_million={"input": D("6.4"), "cache_read": D("1.28"), "output": D("25.6")}),
    ContextTier(name="above-256k", above_input_tokens=256_000,
                unit_prices_per_million={"input": D("9.6"), "cache_read": D("1.92"), "cache_write": D("12"),
                                         "output": D("38.4"), "reasoning": D("38.4")}),
)
QWEN = ModelPrice(model="qwen-max", unit_prices_per_million=BASE, context_tiers=TIERS)
TIERED = BOOK.model_copy(update={"models": (QWEN,)})
DISCOUNTED = BOOK.model_copy(update={"models": (QWEN.model_copy(update={"bu_adjustments": BOOK.models[0].bu_adjustments}),)})

quantities = st.integers(min_value=0, max_value=10**10)
token_maps = st.dictionaries(st.sampled_from(sorted(BASE)), quantities, min_size=1)


def _consumed(tokens: dict[str, int], payer: str = "quark", **update: object) -> TokenConsumed:
    request_input = sum(tokens.get(name, 0) for name in ("input", "cache_read", "cache_write"))
    return TokenConsumed.model_validate({**CONSUMED.model_dump(), "tokens": tokens, "payer_bu": payer,
                                         "request_input_tokens": request_input, **update})


def _tier_prices(request_input: int) -> tuple[str | None, dict[str, Decimal]]:
    """By hand: the highest threshold strictly below the request's input, base prices under it."""
    name, prices = None, dict(BASE)
    for tier in TIERS:
        if request_input > tier.above_input_tokens:
            name, prices = tier.name, {**BASE, **tier.unit_prices_per_million}
    return name, prices


@given(token_maps, st.sampled_from(["quark", "taobao-tmall"]))
def test_the_same_input_gives_identical_priced_bytes(tokens: dict[str, int], payer: str) -> None:
    consumed = _consumed(tokens, payer)
    # Independent copies, as a replay reads them back from the wire.
    again = price(decode(TokenConsumed, canonical_json(consumed)), decode(PriceBookPublished, canonical_json(DISCOUNTED)))
    first = canonical_json(price(consumed, DISCOUNTED))
    assert first == canonical_json(again)
    assert canonical_json(decode(Priced, first)) == first


@given(token_maps, st.sampled_from(["quark", "taobao-tmall"]))
def test_lines_sum_to_the_total_and_each_line_is_tokens_times_price(tokens: dict[str, int], payer: str) -> None:
    priced = price(_consumed(tokens, payer), DISCOUNTED)
    assert priced.total_amount == sum((line.amount for line in priced.lines), D(0))
    assert priced.total_tokens == sum(line.tokens for line in priced.lines) == sum(tokens.values())
    assert [line.token_class for line in priced.lines] == list(_consumed(tokens).tokens)
    factor = D("0.9") if payer == "taobao-tmall" else D(1)
    _, prices = _tier_prices(_consumed(tokens).request_input_tokens)
    for line in priced.lines:
        assert line.unit_price_per_million == prices[line.token_class] * factor
        assert line.amount == line_amount(line.tokens, line.unit_price_per_million)


@given(st.sampled_from([tier.above_input_tokens for tier in TIERS]), st.integers(0, 4000), st.integers(0, 4000),
       st.integers(0, 10**6), st.integers(0, 10**5), st.booleans())
def test_amounts_are_exact_at_every_context_tier_threshold(threshold: int, cache_read: int, cache_write: int,
                                                           output: int, reasoning: int, one_more: bool) -> None:
    """The whole input exactly at a threshold stays below it; one Token more takes that tier,
    for every class of the request, wherever the input Tokens come from."""
    request_input = threshold + one_more
    tokens = {"input": request_input - cache_read - cache_write, "cache_read": cache_read, "cache_write": cache_write,
              "output": output, "reasoning": reasoning}
    priced = price(_consumed({name: value for name, value in tokens.items() if value}), TIERED)
    expected_tier, prices = _tier_prices(request_input)
    below = [tier.name for tier in TIERS if tier.above_input_tokens < threshold]
    assert expected_tier == (TIERS[[tier.above_input_tokens for tier in TIERS].index(threshold)].name if one_more
                             else (below[-1] if below else None))
    assert priced.context_tier == expected_tier
    # Prices have at most six decimals, so Tokens x price / 1e6 is exact at twelve places: no rounding hides here.
    exact = sum((D(count) * prices[name] / MILLION for name, count in tokens.items() if count), D(0))
    assert priced.total_amount == exact
    assert {line.token_class: line.amount for line in priced.lines} == {
        name: D(count) * prices[name] / MILLION for name, count in tokens.items() if count}


@st.composite
def schedules(draw: st.DrawFn) -> PeriodTiers:
    bounds = sorted(draw(st.sets(st.integers(1, 3_000), min_size=0, max_size=4)))
    prices = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)
    fees = st.decimals(min_value=0, max_value=50, places=2, allow_nan=False, allow_infinity=False)
    tiers = [PeriodTier(up_to_tokens=bound, unit_price_per_million=draw(prices), flat_fee=draw(fees))
             for bound in [*bounds, None]]
    return PeriodTiers(mode=draw(st.sampled_from(["graduated", "volume"])), tiers=tuple(tiers))


def _reference_charge(total: int, schedule: PeriodTiers) -> Decimal:
    """Unit by unit, straight from the definition: tier i covers (previous up_to, up_to]."""
    ranges = list(zip([0, *[tier.up_to_tokens for tier in schedule.tiers[:-1]]], schedule.tiers, strict=True))

    def tier_of(unit: int) -> PeriodTier:
        return next(tier for lower, tier in ranges if lower < unit and (tier.up_to_tokens is None or unit <= tier.up_to_tokens))

    if schedule.mode == "volume":
        tier = schedule.tiers[0] if total == 0 else tier_of(total)
        return D(total) * tier.unit_price_per_million / MILLION + tier.flat_fee
    charge = sum((tier_of(unit).unit_price_per_million / MILLION for unit in range(1, total + 1)), D(0))
    reached = [tier for index, (lower, tier) in enumerate(ranges) if index == 0 or total > lower]
    return charge + sum((tier.flat_fee for tier in reached), D(0))


@given(schedules(), st.integers(0, 4_000))
def test_period_tiers_match_a_unit_by_unit_reference(schedule: PeriodTiers, total: int) -> None:
    assert period_tier_charge(total, schedule) == _reference_charge(total, schedule)


FEES = PeriodTiers(mode="graduated", tiers=(
    PeriodTier(up_to_tokens=100, unit_price_per_million=D("10000"), flat_fee=D("1.5")),
    PeriodTier(up_to_tokens=1_000, unit_price_per_million=D("5000"), flat_fee=D("2.25")),
    PeriodTier(up_to_tokens=None, unit_price_per_million=D("1000"), flat_fee=D("4")),
))
# Hand-computed: graduated adds every reached tier's fee (the first even at zero);
# volume prices all units at the total's tier plus only that tier's fee.
FEE_TABLE = [
    # total, graduated, volume
    (0, "1.5", "1.5"),
    (1, "1.51", "1.51"),                   # 0.01 + 1.5
    (100, "2.5", "2.5"),                   # 100 x 0.01 + 1.5
    (101, "4.755", "2.755"),               # 1 + 1.5 + 0.005 + 2.25 ; 0.505 + 2.25
    (1_000, "9.25", "7.25"),               # 1 + 1.5 + 4.5 + 2.25 ; 5 + 2.25
    (1_001, "13.251", "5.001"),            # 9.25 + 0.001 + 4 ; 1.001 + 4
    (10_000, "22.25", "14"),               # 9.25 + 9 + 4 ; 10 + 4
]


def test_period_tiers_with_flat_fees_match_the_hand_computed_table() -> None:
    for total, graduated, volume in FEE_TABLE:
        assert period_tier_charge(total, FEES) == D(graduated), (total, "graduated")
        assert period_tier_charge(total, FEES.model_copy(update={"mode": "volume"})) == D(volume), (total, "volume")


START = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)


@given(st.integers(min_value=-10**12, max_value=10**12), st.integers(min_value=1, max_value=10**11),
       st.permutations(range(3)))
def test_consumption_just_before_and_after_a_version_starts_is_priced_by_the_right_version(
        start_offset_us: int, gap_us: int, order: list[int]) -> None:
    start = START + timedelta(microseconds=start_offset_us)
    v1 = BOOK.model_copy(update={"effective_from": start - timedelta(days=400), "version": 1})
    v2 = BOOK.model_copy(update={"effective_from": start, "version": 2, "models": (
        BOOK.models[0].model_copy(update={"unit_prices_per_million": {**BASE, "input": D("3.6")}}),)})
    other = BOOK.model_copy(update={"book_id": "other", "effective_from": start - timedelta(days=1), "models": (
        BOOK.models[0].model_copy(update={"model": "another-model"}),)})
    index = BookIndex.of([(v1, v2, other)[position] for position in order])  # arrival order does not matter
    tokens = {"input": 1_000}
    at_start = price_in_force(_consumed(tokens, event_time=start), index)
    just_before = price_in_force(_consumed(tokens, event_time=start - timedelta(microseconds=1)), index)
    long_after = price_in_force(_consumed(tokens, event_time=start + timedelta(microseconds=gap_us)), index)
    long_before = price_in_force(_consumed(tokens, event_time=start - timedelta(microseconds=gap_us)), index)
    assert (just_before.book_version, at_start.book_version, long_after.book_version, long_before.book_version) == (1, 2, 2, 1)
    assert (just_before.total_amount, at_start.total_amount) == (D("0.0024"), D("0.0036"))


def test_every_arrival_order_of_versions_gives_the_same_index() -> None:
    versions = [BOOK.model_copy(update={"version": number, "effective_from": START + timedelta(days=number)})
                for number in range(1, 5)]
    indexes = {tuple((book.book_id, book.version) for book in BookIndex.of(permutation).versions)
               for permutation in itertools.permutations(versions)}
    assert indexes == {(("internal", 1), ("internal", 2), ("internal", 3), ("internal", 4))}
