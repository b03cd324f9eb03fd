"""Money is exact: floats refused, plain notation, half-even at the fixed scale,
rounding to the minor unit once, splits that sum to the whole."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tokenhub.contracts.money import (
    Amount,
    MoneyError,
    format_amount,
    line_amount,
    quantize,
    round_to_minor,
    split_largest_remainder,
    to_amount,
    to_decimal,
)


class Holder(BaseModel):
    amount: Amount


@pytest.mark.parametrize("value", [0.1, 1.0, float("nan"), True])
def test_floats_and_booleans_are_refused(value: object) -> None:
    with pytest.raises(MoneyError):
        to_amount(value)
    with pytest.raises(ValidationError):
        Holder(amount=value)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "abc", "", "1e"])
def test_non_finite_and_garbage_are_refused(text: str) -> None:
    with pytest.raises(MoneyError):
        to_amount(text)


def test_more_than_twelve_places_is_refused_not_rounded() -> None:
    with pytest.raises(MoneyError):
        to_amount("0.0000000000001")
    assert to_amount("0.100000000000000") == Decimal("0.1")  # trailing zeros change nothing


@pytest.mark.parametrize(("value", "text"), [
    (Decimal("1E-12"), "0.000000000001"),
    (Decimal("1E+5"), "100000.000000000000"),
    (Decimal("-2.5"), "-2.500000000000"),
    (Decimal("12345678901234567890.5"), "12345678901234567890.500000000000"),
    (Decimal(0), "0.000000000000"),
])
def test_plain_notation_at_the_fixed_scale(value: Decimal, text: str) -> None:
    assert format_amount(value) == text
    assert Holder(amount=value).model_dump(mode="json") == {"amount": text}


@pytest.mark.parametrize(("tokens", "price", "amount"), [
    (1, "2.4", "0.000002400000"),
    (1_000_000, "2.4", "2.400000000000"),
    (1234, "17.28", "0.021323520000"),
    (0, "9.6", "0.000000000000"),
    # 3 * 0.000000000001 / 10**6 is below the scale: half-even at the 12th place.
    (1, "0.0000005", "0.000000000000"),
    (1, "0.0000015", "0.000000000002"),
    (1, "0.0000025", "0.000000000002"),
    (10**13, "1000", "10000000000.000000000000"),
])
def test_line_amount_is_exact_and_half_even_at_the_twelfth_place(tokens: int, price: str, amount: str) -> None:
    assert format_amount(line_amount(tokens, Decimal(price))) == amount


@pytest.mark.parametrize(("value", "mode", "rounded"), [
    ("2.345", "half_even", "2.34"),
    ("2.355", "half_even", "2.36"),
    ("2.345", "half_up", "2.35"),
    ("-2.345", "half_even", "-2.34"),
    ("-2.345", "half_up", "-2.35"),
    ("2.349", "down", "2.34"),
    ("2.341", "up", "2.35"),
    ("0.004999999999", "half_even", "0.00"),
    ("0.005000000000", "half_even", "0.00"),
    ("0.015000000000", "half_even", "0.02"),
])
def test_round_to_minor(value: str, mode: str, rounded: str) -> None:
    assert round_to_minor(Decimal(value), 2, mode) == Decimal(rounded)


def test_unknown_rounding_mode_is_an_error() -> None:
    with pytest.raises(MoneyError, match="unknown rounding mode"):
        round_to_minor(Decimal(1), 2, "bankers")


def test_three_way_split_of_one_hundred() -> None:
    assert split_largest_remainder(100, [Decimal(1)] * 3) == [34, 33, 33]


@pytest.mark.parametrize(("total", "weights", "parts"), [
    (0, ["50", "50"], [0, 0]),
    (1, ["50", "30", "20"], [1, 0, 0]),
    (7, ["50", "30", "20"], [4, 2, 1]),
    (10, ["33.3", "33.3", "33.4"], [3, 3, 4]),
    (5, ["1", "1"], [3, 2]),  # a tie goes to the earlier payer
])
def test_split_table(total: int, weights: list[str], parts: list[int]) -> None:
    assert split_largest_remainder(total, [Decimal(weight) for weight in weights]) == parts


@pytest.mark.parametrize("weights", [[], ["-1", "2"], ["0", "0"]])
def test_split_refuses_bad_weights(weights: list[str]) -> None:
    with pytest.raises(MoneyError):
        split_largest_remainder(10, [Decimal(weight) for weight in weights])


def test_split_refuses_a_negative_total() -> None:
    with pytest.raises(MoneyError):
        split_largest_remainder(-1, [Decimal(1)])


@given(st.integers(min_value=0, max_value=10**13),
       st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=16))
def test_split_parts_sum_to_the_whole_and_stay_within_one_of_the_exact_share(total: int, weights: list[int]) -> None:
    parts = split_largest_remainder(total, [Decimal(weight) for weight in weights])
    assert sum(parts) == total
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = Decimal(total) * weight / weight_sum
        assert abs(part - exact) < 1


@given(st.integers(min_value=0, max_value=10**12), st.decimals(min_value=0, max_value=10_000, places=6))
def test_line_amount_is_within_half_a_unit_of_the_exact_product(tokens: int, price: Decimal) -> None:
    exact = Decimal(tokens) * price / Decimal(10**6)
    assert abs(line_amount(tokens, price) - exact) <= Decimal("0.5E-12")


def _to_amount_by_the_general_path(text: str) -> Decimal:
    """What `to_amount` did for every string before its short path for plain notation."""
    result = to_decimal(text)
    fixed = quantize(result)
    if fixed != result:
        raise MoneyError(f"{text} has more than 12 decimal places")
    return fixed


@given(st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1), st.integers(min_value=0, max_value=12))
def test_the_short_path_for_plain_notation_equals_the_general_one(units: int, places: int) -> None:
    digits = str(abs(units)).rjust(13, "0")
    whole, fraction = ("-" if units < 0 else "") + digits[:-12], digits[-12:]
    text = f"{whole}.{fraction[:places]}" if places else whole
    short, general = to_amount(text), _to_amount_by_the_general_path(text)
    assert (short, short.as_tuple()) == (general, general.as_tuple())


@pytest.mark.parametrize("text", ["1" * 27, "-" + "9" * 27, "1.0000000000001", "+1", " 1", "1.", ".5", "1e3", "0x10", "1_000"])
def test_the_short_path_leaves_everything_else_to_the_general_one(text: str) -> None:
    try:
        expected: object = _to_amount_by_the_general_path(text)
    except MoneyError as error:
        expected = type(error)
    try:
        got: object = to_amount(text)
    except MoneyError as error:
        got = type(error)
    assert got == expected
