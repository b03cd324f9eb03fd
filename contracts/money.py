"""Exact money and Token quantities.

Amounts are `Decimal` at a fixed scale of 12 decimal places (DESIGN.md decision 5):
a single request often costs a fraction of a cent, so priced amounts and the
ledger keep that precision and rounding to the currency's minor unit happens
once, on invoice lines, in `round_to_minor`. Floats are refused at every
boundary: a binary fraction cannot represent 0.1 CNY.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation, localcontext
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

SCALE: Final = 12
"""Decimal places of unit prices (per million Tokens) and amounts."""

QUANTUM: Final = Decimal(1).scaleb(-SCALE)
TOKENS_PER_MILLION: Final = Decimal(1_000_000)

# 38 significant digits hold 26 integer digits at scale 12: a trillion-Token
# day at any plausible price fits with room to spare; NUMERIC(38, 12) in Postgres.
PRECISION: Final = 38

ROUNDING_MODES: Final = {
    "half_even": ROUND_HALF_EVEN,
    "half_up": ROUND_HALF_UP,
    "down": ROUND_DOWN,
    "up": ROUND_UP,
}
DEFAULT_ROUNDING: Final = "half_even"

_PLAIN_PATTERN: Final = r"^-?\d+(\.\d+)?$"


class MoneyError(ValueError):
    """A value cannot be an exact amount."""


def to_decimal(value: Any) -> Decimal:
    """Parse an exact decimal from a Decimal, int or string; refuse floats."""
    if isinstance(value, bool):
        raise MoneyError("a boolean is not an amount")
    if isinstance(value, float):
        raise MoneyError(f"floats are refused for money, got {value!r}; send a string")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            result = Decimal(text)
        except InvalidOperation as error:
            raise MoneyError(f"not a decimal number: {value!r}") from error
    else:
        raise MoneyError(f"not an amount: {type(value).__name__}")
    if not result.is_finite():
        raise MoneyError(f"amounts must be finite, got {value!r}")
    return result


def quantize(value: Decimal) -> Decimal:
    """Fix a value at SCALE places, half-even; the one place sub-scale digits go."""
    with localcontext() as context:
        context.prec = PRECISION + 10
        result = value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)
    if len(result.as_tuple().digits) > PRECISION:
        raise MoneyError(f"amount {value} exceeds {PRECISION} significant digits")
    return result


def to_amount(value: Any) -> Decimal:
    """Parse and fix at SCALE places. Refuses values with more than SCALE places:
    silently rounding an input would change what someone said."""
    result = to_decimal(value)
    exponent = result.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -SCALE:
        stripped = result.normalize()
        stripped_exponent = stripped.as_tuple().exponent
        if isinstance(stripped_exponent, int) and stripped_exponent < -SCALE:
            raise MoneyError(f"{value} has more than {SCALE} decimal places")
    return quantize(result)


def format_amount(value: Decimal) -> str:
    """Plain notation (never exponent form) at the fixed scale."""
    return f"{quantize(value):f}"


def line_amount(tokens: int, unit_price_per_million: Decimal) -> Decimal:
    """Money for `tokens` at a price per million Tokens, half-even at SCALE places."""
    with localcontext() as context:
        context.prec = PRECISION + 10
        return quantize(Decimal(tokens) * unit_price_per_million / TOKENS_PER_MILLION)


def round_to_minor(amount: Decimal, minor_units: int = 2, mode: str = DEFAULT_ROUNDING) -> Decimal:
    """Round to the currency's minor unit. The only rounding of money outside
    pricing's fixed scale, applied once per invoice line (DESIGN.md decision 5)."""
    if mode not in ROUNDING_MODES:
        raise MoneyError(f"unknown rounding mode {mode!r}; one of {sorted(ROUNDING_MODES)}")
    with localcontext() as context:
        context.prec = PRECISION + 10
        return amount.quantize(Decimal(1).scaleb(-minor_units), rounding=ROUNDING_MODES[mode])


def split_largest_remainder(total: int, weights: list[Decimal]) -> list[int]:
    """Split a whole quantity by weights so the integer parts sum exactly to `total`.

    Each part gets the floor of its exact share; the leftover units go one each
    to the largest remainders, ties to the earlier weight, so the result is
    deterministic.
    """
    if total < 0:
        raise MoneyError(f"cannot split a negative quantity {total}")
    if not weights or any(weight < 0 for weight in weights):
        raise MoneyError("weights must be non-empty and non-negative")
    weight_sum = sum(weights, Decimal(0))
    if weight_sum <= 0:
        raise MoneyError("weights must not all be zero")
    with localcontext() as context:
        context.prec = PRECISION + 10
        exact = [Decimal(total) * weight / weight_sum for weight in weights]
    floors = [int(share) for share in exact]
    leftover = total - sum(floors)
    order = sorted(range(len(weights)), key=lambda index: (-(exact[index] - floors[index]), index))
    for index in order[:leftover]:
        floors[index] += 1
    return floors


Amount = Annotated[
    Decimal,
    BeforeValidator(to_amount),
    PlainSerializer(format_amount, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": _PLAIN_PATTERN, "description": "exact decimal, plain notation, 12 places"}),
]
"""An exact amount at the fixed scale: a string on the wire, Decimal in Python."""

ExactDecimal = Annotated[
    Decimal,
    BeforeValidator(to_decimal),
    PlainSerializer(lambda value: f"{value:f}", return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": _PLAIN_PATTERN, "description": "exact decimal, plain notation"}),
]
"""An exact decimal at its own scale (raw measured units such as seconds)."""
