"""Exact money and Token quantities.

Amounts are `Decimal` at a fixed scale of 12 decimal places (docs/architecture.md decision 5):
a single request often costs a fraction of a cent, so priced amounts and the
ledger keep that precision. Rounding to the currency's minor unit happens in
`round_to_minor` only, in a named `RoundingMode`: once per invoice, on its
total (the invoice shows the rounding as its own figure), and once per business
unit on a settlement's net positions. Floats are refused at every boundary: a
binary fraction cannot represent 0.1 CNY.
"""

from __future__ import annotations

import math
import re

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Context, Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

SCALE: Final = 12
"""Decimal places of unit prices (per million Tokens) and amounts."""

QUANTUM: Final = Decimal(1).scaleb(-SCALE)
TOKENS_PER_MILLION: Final = Decimal(1_000_000)

# 38 significant digits hold 26 integer digits at scale 12: a trillion-Token
# day at any plausible price fits with room to spare; NUMERIC(38, 12) in Postgres.
PRECISION: Final = 38
MAGNITUDE_LIMIT: Final = Decimal(10) ** (PRECISION - SCALE)
"""The first amount that no longer fits NUMERIC(38, 12)."""

_CONTEXT: Final = Context(prec=PRECISION + 10, rounding=ROUND_HALF_EVEN)
"""All money arithmetic runs in this one context, passed explicitly: wide enough
that a product of a Token count and a unit price is exact before it is fixed at
SCALE places, and cheaper than a `localcontext()` per call on the hot path."""

RoundingMode = Literal["half_even", "half_up", "down", "up"]
"""How an amount is rounded to the minor unit: the one name for it, in price
books (`rounding`), on invoices (`rounding_mode`) and in settlement."""

ROUNDING_MODES: Final[dict[str, str]] = {
    "half_even": ROUND_HALF_EVEN,
    "half_up": ROUND_HALF_UP,
    "down": ROUND_DOWN,
    "up": ROUND_UP,
}
if set(ROUNDING_MODES) != set(get_args(RoundingMode)):  # pragma: no cover - a module that cannot import
    raise ImportError("ROUNDING_MODES and RoundingMode name different modes")
DEFAULT_ROUNDING: Final[RoundingMode] = "half_even"

_PLAIN_PATTERN: Final = r"^-?\d+(\.\d+)?$"


class MoneyError(ValueError):
    """A value cannot be an exact amount."""


class OutOfRange(MoneyError):
    """An exact decimal with more digits before or after the point than any figure here can have."""


def to_decimal(value: Any) -> Decimal:
    """Parse an exact decimal from a Decimal, int or string; refuse floats."""
    kind = type(value)  # exact types first: this runs for every amount of every event
    if kind is str or isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation as error:
            raise MoneyError(f"not a decimal number: {value!r}") from error
    elif kind is Decimal:
        result = value
    elif kind is bool:
        raise MoneyError("a boolean is not an amount")
    elif isinstance(value, float):
        raise MoneyError(f"floats are refused for money, got {value!r}; send a string")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, Decimal):
        result = value
    else:
        raise MoneyError(f"not an amount: {type(value).__name__}")
    if not result.is_finite():
        raise MoneyError(f"amounts must be finite, got {value!r}")
    if result.adjusted() >= PRECISION or result.as_tuple().exponent < -PRECISION:
        # Written out in plain notation (as every event writes it), "1e999999999"
        # would be a billion digits: refused here, before anything formats it.
        raise OutOfRange(f"{str(value)[:32]} is out of range: at most {PRECISION} digits before the point and "
                         f"{PRECISION} after it")
    return result


def quantize(value: Decimal) -> Decimal:
    """Fix a value at SCALE places, half-even; the one place sub-scale digits go."""
    try:
        result = value.quantize(QUANTUM, context=_CONTEXT)
    except InvalidOperation as error:
        raise MoneyError(f"amount {value} exceeds {PRECISION} significant digits") from error
    if not -MAGNITUDE_LIMIT < result < MAGNITUDE_LIMIT:
        raise MoneyError(f"amount {value} exceeds {PRECISION} significant digits")
    return result


_CANONICAL_AMOUNT: Final = re.compile(rf"-?[0-9]{{1,{PRECISION - SCALE}}}\.[0-9]{{{SCALE}}}")
"""An amount as `format_amount` writes it: what every event we publish carries,
so decoding one takes the short path in `to_amount`."""


def to_amount(value: Any) -> Decimal:
    """Parse and fix at SCALE places. Refuses values with more than SCALE places:
    silently rounding an input would change what someone said."""
    if type(value) is str and _CANONICAL_AMOUNT.fullmatch(value):
        # At most 26 integer digits and exactly 12 places: finite, in range and
        # already at SCALE, so the general path below would return this same value.
        return Decimal(value)
    result = to_decimal(value)
    fixed = quantize(result)
    if fixed != result:
        raise MoneyError(f"{value} has more than {SCALE} decimal places")
    return fixed


def format_amount(value: Decimal) -> str:
    """Plain notation (never exponent form) at the fixed scale."""
    return f"{quantize(value):f}"


def _serialize_amount(value: Decimal) -> str:
    """`format_amount` for a field that was validated as an Amount, so is known
    to fit: the range check is skipped on the serialization hot path."""
    return f"{value.quantize(QUANTUM, context=_CONTEXT):f}"


def line_amount(tokens: int, unit_price_per_million: Decimal) -> Decimal:
    """Money for `tokens` at a price per million Tokens, half-even at SCALE places."""
    return quantize(_CONTEXT.divide(_CONTEXT.multiply(Decimal(tokens), unit_price_per_million), TOKENS_PER_MILLION))


def round_to_minor(amount: Decimal, minor_units: int = 2, mode: RoundingMode | str = DEFAULT_ROUNDING) -> Decimal:
    """Round to the currency's minor unit. The only rounding of money outside
    pricing's fixed scale: an invoice's total, a settlement's net positions
    (docs/architecture.md decision 5)."""
    if mode not in ROUNDING_MODES:
        raise MoneyError(f"unknown rounding mode {mode!r}; one of {sorted(ROUNDING_MODES)}")
    return amount.quantize(Decimal(1).scaleb(-minor_units), rounding=ROUNDING_MODES[mode], context=_CONTEXT)


def split_largest_remainder(total: int, weights: list[Decimal]) -> list[int]:
    """Split a whole quantity by weights so the integer parts sum exactly to `total`.

    Each part gets the floor of its exact share; the leftover units go one each
    to the largest remainders, ties to the earlier weight, so the result is
    deterministic. Weights are scaled to integers first, so shares and their
    remainders are exact whatever the number of decimal places.
    """
    if total < 0:
        raise MoneyError(f"cannot split a negative quantity {total}")
    if not weights or any(weight < 0 for weight in weights):
        raise MoneyError("weights must be non-empty and non-negative")
    if len(weights) == 1:
        if weights[0] == 0:
            raise MoneyError("weights must not all be zero")
        return [total]  # one payer, the usual case: nothing to split
    ratios = [weight.as_integer_ratio() for weight in weights]
    denominator = math.lcm(*(ratio_denominator for _, ratio_denominator in ratios))
    whole_weights = [numerator * (denominator // ratio_denominator) for numerator, ratio_denominator in ratios]
    weight_sum = sum(whole_weights)
    if weight_sum <= 0:
        raise MoneyError("weights must not all be zero")
    floors = [total * weight // weight_sum for weight in whole_weights]
    remainders = [total * weight % weight_sum for weight in whole_weights]
    leftover = total - sum(floors)
    order = sorted(range(len(weights)), key=lambda index: (-remainders[index], index))
    for index in order[:leftover]:
        floors[index] += 1
    return floors


Amount = Annotated[
    Decimal,
    BeforeValidator(to_amount),
    PlainSerializer(_serialize_amount, return_type=str, when_used="json"),
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
