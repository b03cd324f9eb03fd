"""Compiled codecs for the internal hops: TokenConsumed, Priced and
LedgerPosted as msgspec structs, decoded and encoded without a Python call per
field; and usage as metering's compiled path reads it (`UsageWire`), which
metering takes only where it reads exactly as `UsageReported` does.

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
from tokenhub.contracts.events import (
    CLOUDEVENTS_TYPE,
    ID_LENGTH_MAX,
    NAME_LENGTH_MAX,
    QUANTITY_MAX,
    SOURCE_LENGTH_MAX,
    LedgerPosted,
    Priced,
    PricedLine,
    TokenConsumed,
    decode,
)
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


class UsageDataWire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """`events.UsageData` as metering's compiled path reads it: counts are JSON
    integers in range, never booleans, strings or fractions; an unknown field is
    refused, as the contract refuses it. The business unit's slug and the exact
    decimals (`video_seconds`, `audio_seconds`: a string or an integer as
    received) are checked and parsed by metering after decoding, with the
    contract's own functions."""

    consumer_bu: str
    app: Name | None = None
    product: Name | None = None
    model: Name
    input_tokens: Quantity | None = None
    cache_read_tokens: Quantity | None = None
    cache_write_tokens: Quantity | None = None
    output_tokens: Quantity | None = None
    reasoning_tokens: Quantity | None = None
    embedding_tokens: Quantity | None = None
    image_count: Quantity | None = None
    image_size: Name | None = None
    video_seconds: str | int | None = None
    video_resolution: Name | None = None
    audio_seconds: str | int | None = None
    agent_steps: Quantity | None = None
    tool_calls: Quantity | None = None
    api_calls: Quantity | None = None


class UsageWire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """`events.UsageReported` without extension attributes, as metering's compiled
    path reads it. `time` is read as the string received and `video_seconds` /
    `audio_seconds` as received; metering parses them with the contract's rules
    and puts the `datetime` and the `Decimal`s in their place
    (`msgspec.structs.replace`), and that struct encodes to the usage's
    canonical form."""

    specversion: Literal["1.0"]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LENGTH_MAX)]
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=SOURCE_LENGTH_MAX)]
    type: Literal["com.tokenhub.usage.v1"]
    time: str
    subject: Annotated[str, msgspec.Meta(max_length=SOURCE_LENGTH_MAX)] | None = None
    datacontenttype: Literal["application/json"] | None = None
    data: UsageDataWire


if CLOUDEVENTS_TYPE != "com.tokenhub.usage.v1":  # pragma: no cover - a module that cannot import
    raise ImportError("UsageWire.type must name the contract's CloudEvents type")


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


class PostingWire(msgspec.Struct, frozen=True, kw_only=True):
    """`events.Posting` on the wire: its quantities at the fixed scale."""

    ledger: Literal["money", "tokens"]
    account: str
    debit: PlainDecimal
    credit: PlainDecimal


class PostedWire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`events.LedgerPosted` on the wire. Without its `entry_hash` (None, so
    left out) it encodes to the content the hash covers."""

    id: uuid.UUID
    schema_version: int
    event_time: AwareTime
    cause_id: CauseId
    type: Literal["ledger.posted"]
    priced_id: uuid.UUID
    kind: Literal["charge", "reversal", "correction", "adjustment"]
    corrects_id: uuid.UUID | None = None
    payer_bu: BuId
    consumer_bu: BuId
    provider_bu: BuId
    app: Name | None = None
    model: Name
    book_id: Name | None = None
    book_version: int | None = None
    currency: str
    lines: tuple[PricedLineWire, ...]
    amount: PlainDecimal
    tokens: SignedQuantity
    postings: tuple[PostingWire, ...]
    chain: BuId
    sequence: Annotated[int, msgspec.Meta(ge=1)]
    entry_hash: str | None = None
    previous_hash: str
    posted_at: AwareTime
    invoice_id: uuid.UUID | None = None
    overage: Literal[True] | None = None


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_CONSUMED: Final = msgspec.json.Decoder(ConsumedWire)
_PRICED: Final = msgspec.json.Decoder(PricedWire)
_POSTED: Final = msgspec.json.Decoder(PostedWire)


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
        lines=tuple(_line_wire(line) for line in event.lines),
        total_tokens=event.total_tokens, total_amount=format_amount(event.total_amount), invoice_id=event.invoice_id,
    )


def _line_wire(line: PricedLine) -> PricedLineWire:
    return PricedLineWire(token_class=line.token_class, tokens=line.tokens,
                          unit_price_per_million=format_amount(line.unit_price_per_million), amount=format_amount(line.amount))


def posted_wire(event: LedgerPosted) -> PostedWire:
    return PostedWire(
        id=event.id, schema_version=event.schema_version, event_time=event.event_time, cause_id=event.cause_id,
        type=event.type, priced_id=event.priced_id, kind=event.kind, corrects_id=event.corrects_id,
        payer_bu=event.payer_bu, consumer_bu=event.consumer_bu, provider_bu=event.provider_bu, app=event.app,
        model=event.model, book_id=event.book_id, book_version=event.book_version, currency=event.currency,
        lines=tuple(_line_wire(line) for line in event.lines), amount=format_amount(event.amount), tokens=event.tokens,
        postings=tuple(PostingWire(ledger=posting.ledger, account=posting.account, debit=format_amount(posting.debit),
                                   credit=format_amount(posting.credit)) for posting in event.postings),
        chain=event.chain, sequence=event.sequence, entry_hash=event.entry_hash, previous_hash=event.previous_hash,
        posted_at=event.posted_at, invoice_id=event.invoice_id, overage=event.overage,
    )


def encode(wire: ConsumedWire | PricedWire | PostedWire) -> bytes:
    """The canonical bytes of an event on the wire."""
    return _ENCODER.encode(wire)


def encode_consumed(event: TokenConsumed) -> bytes:
    """`canonical_json(event)`, without pydantic's per-field serializers."""
    return _ENCODER.encode(consumed_wire(event))


def encode_priced(event: Priced) -> bytes:
    """`canonical_json(event)`, without pydantic's per-field serializers."""
    return _ENCODER.encode(priced_wire(event))


def read_usage(envelope: dict[str, object]) -> UsageWire:
    """A usage envelope (a dict from JSON or ce_ headers) as `UsageWire`, types and
    bounds checked strictly; raises `msgspec.ValidationError` for anything else."""
    return msgspec.convert(envelope, UsageWire, strict=True)


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


def decode_posted(value: bytes) -> PostedWire:
    """A LedgerPosted from ledger.posted, as `decode_consumed` does for TokenConsumed."""
    try:
        return _POSTED.decode(value)
    except msgspec.ValidationError:
        return posted_wire(decode(LedgerPosted, value))
