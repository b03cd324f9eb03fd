"""Compiled codecs for the internal hops: TokenConsumed and Priced as msgspec
structs, decoded and encoded without a Python call per field.

The pydantic models in `contracts.events` stay the published contract and the
source of the JSON Schemas. These structs mirror them field for field, and
encode to the one canonical form (`contracts.canonical`: sorted keys, no
insignificant whitespace, None left out, amounts as plain strings at the fixed
scale); tests/contract/test_codecs.py holds both to the same bytes for the
golden files and for generated events. Amounts and exact decimals travel as
the strings the contract writes, so nothing is reformatted on the way through.

Decoding follows decision 13 for internal topics: fields a newer minor version
added are ignored. A field that the canonical form always writes is required
here; a payload without one (not written by us) is not for the fast path and
goes to the tolerant pydantic decoder (`decode_consumed`). The fast path checks
what msgspec checks natively (types, numeric bounds, lengths, zones); the
formats of strings (slugs, class names, plain decimals) were checked by the
contract's model where the event was built, and a regular expression per field
would cost more than the rest of the decoding together."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, Literal

import msgspec
from tokenhub.contracts.events import ID_LENGTH_MAX, NAME_LENGTH_MAX, QUANTITY_MAX, Priced, TokenConsumed, decode
from tokenhub.contracts.ids import SLUG_LENGTH_MAX
from tokenhub.contracts.money import PRECISION, format_amount

CLASS_NAME_LENGTH_MAX: Final = 32
PLAIN_LENGTH_MAX: Final = PRECISION + 2  # digits, a sign and a point

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
"""Event times carry a zone (decision 8); the canonical form writes UTC with `Z`."""
Quantity = Annotated[int, msgspec.Meta(ge=0, le=QUANTITY_MAX)]
SignedQuantity = Annotated[int, msgspec.Meta(ge=-QUANTITY_MAX, le=QUANTITY_MAX)]
BuId = Annotated[str, msgspec.Meta(min_length=1, max_length=SLUG_LENGTH_MAX)]
TokenClass = Annotated[str, msgspec.Meta(min_length=1, max_length=CLASS_NAME_LENGTH_MAX)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_LENGTH_MAX)]
CauseId = Annotated[str, msgspec.Meta(max_length=ID_LENGTH_MAX)]
PlainDecimal = Annotated[str, msgspec.Meta(min_length=1, max_length=PLAIN_LENGTH_MAX)]
"""An exact decimal as the contract writes it: a string in plain notation."""


class ConsumedWire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`events.TokenConsumed` on the wire. Only fields whose default is None are
    optional, so leaving defaults out leaves out exactly the None values."""

    id: uuid.UUID
    schema_version: int
    event_time: AwareTime
    cause_id: CauseId
    type: Literal["tokens.consumed"]
    usage_source: str
    usage_id: str
    payer_bu: BuId
    consumer_bu: BuId
    provider_bu: BuId
    app: Name | None = None
    product: Name | None = None
    model: Name
    tokens: dict[TokenClass, Quantity]
    request_input_tokens: Quantity
    raw_units: dict[str, PlainDecimal]
    conversion_version: int | None = None
    share_percent: PlainDecimal
    payer_index: Annotated[int, msgspec.Meta(ge=0)]
    payer_count: Annotated[int, msgspec.Meta(ge=1)]
    funding_agreement_id: str | None = None


class PricedLineWire(msgspec.Struct, frozen=True, kw_only=True):
    token_class: TokenClass
    tokens: SignedQuantity
    unit_price_per_million: PlainDecimal
    amount: PlainDecimal


class PricedWire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`events.Priced` on the wire."""

    id: uuid.UUID
    schema_version: int
    event_time: AwareTime
    cause_id: CauseId
    type: Literal["tokens.priced"]
    kind: Literal["charge", "reversal", "correction", "adjustment"]
    consumed_id: uuid.UUID
    corrects_id: uuid.UUID | None = None
    payer_bu: BuId
    consumer_bu: BuId
    provider_bu: BuId
    app: Name | None = None
    model: Name
    book_id: Name
    book_version: int
    context_tier: Name | None = None
    price_factor: PlainDecimal | None = None
    currency: str
    lines: tuple[PricedLineWire, ...]
    total_tokens: SignedQuantity
    total_amount: PlainDecimal
    invoice_id: uuid.UUID | None = None


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_CONSUMED: Final = msgspec.json.Decoder(ConsumedWire)
_PRICED: Final = msgspec.json.Decoder(PricedWire)


def _plain(value: Decimal) -> str:
    """An exact decimal as the contract writes it: plain notation at its own scale."""
    return f"{value:f}"


def consumed_wire(event: TokenConsumed) -> ConsumedWire:
    return ConsumedWire(
        id=event.id, schema_version=event.schema_version, event_time=event.event_time, cause_id=event.cause_id,
        type=event.type, usage_source=event.usage_source, usage_id=event.usage_id, payer_bu=event.payer_bu,
        consumer_bu=event.consumer_bu, provider_bu=event.provider_bu, app=event.app, product=event.product,
        model=event.model, tokens=event.tokens, request_input_tokens=event.request_input_tokens,
        raw_units={name: _plain(value) for name, value in event.raw_units.items()},
        conversion_version=event.conversion_version, share_percent=_plain(event.share_percent),
        payer_index=event.payer_index, payer_count=event.payer_count, funding_agreement_id=event.funding_agreement_id,
    )


def priced_wire(event: Priced) -> PricedWire:
    return PricedWire(
        id=event.id, schema_version=event.schema_version, event_time=event.event_time, cause_id=event.cause_id,
        type=event.type, kind=event.kind, consumed_id=event.consumed_id, corrects_id=event.corrects_id,
        payer_bu=event.payer_bu, consumer_bu=event.consumer_bu, provider_bu=event.provider_bu, app=event.app,
        model=event.model, book_id=event.book_id, book_version=event.book_version, context_tier=event.context_tier,
        price_factor=None if event.price_factor is None else _plain(event.price_factor), currency=event.currency,
        lines=tuple(PricedLineWire(token_class=line.token_class, tokens=line.tokens,
                                   unit_price_per_million=format_amount(line.unit_price_per_million),
                                   amount=format_amount(line.amount)) for line in event.lines),
        total_tokens=event.total_tokens, total_amount=format_amount(event.total_amount), invoice_id=event.invoice_id,
    )


def encode(wire: ConsumedWire | PricedWire) -> bytes:
    """The canonical bytes of an event on the wire."""
    return _ENCODER.encode(wire)


def encode_consumed(event: TokenConsumed) -> bytes:
    """`canonical_json(event)`, without pydantic's per-field serializers."""
    return _ENCODER.encode(consumed_wire(event))


def encode_priced(event: Priced) -> bytes:
    """`canonical_json(event)`, without pydantic's per-field serializers."""
    return _ENCODER.encode(priced_wire(event))


def decode_consumed(value: bytes) -> ConsumedWire:
    """A TokenConsumed from tokens.consumed: the compiled decoder for what the
    canonical form writes; anything else through the contract's tolerant decoder,
    so an event is never refused here that the contract accepts."""
    try:
        return _CONSUMED.decode(value)
    except msgspec.ValidationError:
        return consumed_wire(decode(TokenConsumed, value))


def decode_priced(value: bytes) -> PricedWire:
    """A Priced from tokens.priced, as `decode_consumed` does for TokenConsumed."""
    try:
        return _PRICED.decode(value)
    except msgspec.ValidationError:
        return priced_wire(decode(Priced, value))
