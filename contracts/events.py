"""The event models: small, frozen, past-tense facts.

Events we build forbid unknown fields; `decode` reads internal topics
tolerantly, dropping fields added by a newer minor version (docs/architecture.md
decision 13). Usage `data` is never read tolerantly: a quantity we do not
understand must not be dropped silently.
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tokenhub.contracts.ids import BuId
from tokenhub.contracts.money import DEFAULT_ROUNDING, Amount, ExactDecimal, RoundingMode
from tokenhub.contracts.tokens import TokenClass, class_order

QUANTITY_MAX: Final = 10**13
"""Largest quantity of one class in one event. A record video task is millions
of Tokens; ten trillion in one event is a bug or an attack, not usage."""

ID_LENGTH_MAX: Final = 256
SOURCE_LENGTH_MAX: Final = 512
NAME_LENGTH_MAX: Final = 128


def _to_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
Quantity = Annotated[int, Field(ge=0, le=QUANTITY_MAX)]
Count = Annotated[int, Field(strict=True, ge=0, le=QUANTITY_MAX)]
"""A count a producer measured: a JSON integer, never a boolean, a string or a
fraction (a lax integer billed `true` as one Token and `"12345"` as a count)."""

_RFC3339: Final = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?")


def _rfc3339(value: Any) -> Any:
    """A usage time is an RFC 3339 string with an offset, as CloudEvents says: an
    epoch number or any other form is refused with its own reason. A datetime
    built in Python (the client) is checked for its zone by the type itself."""
    if isinstance(value, datetime):
        return value
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError("invalid_time", "must be an RFC 3339 time string such as 2026-03-14T10:00:00+08:00")
    if match.group(1) is None:
        raise PydanticCustomError("time_without_zone", "has no offset (Z or +08:00)")
    return value


UsageTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_to_utc)]
SignedQuantity = Annotated[int, Field(ge=-QUANTITY_MAX, le=QUANTITY_MAX)]
Name = Annotated[str, Field(min_length=1, max_length=NAME_LENGTH_MAX)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Frozen):
    """Common header of every derived event."""

    TYPE: ClassVar[str]
    id: uuid.UUID
    schema_version: int = 1
    event_time: UtcDatetime
    cause_id: str = Field(max_length=ID_LENGTH_MAX)


# --- usage input -----------------------------------------------------------------

class UsageData(Frozen):
    """What a producer measured for one request, in disjoint classes."""

    consumer_bu: BuId
    app: Name | None = None
    product: Name | None = None
    model: Name = Field(description="model, tool or agent id as registered in the catalogue")
    input_tokens: Count | None = Field(None, description="uncached input tokens")
    cache_read_tokens: Count | None = None
    cache_write_tokens: Count | None = None
    output_tokens: Count | None = Field(None, description="visible output tokens, reasoning excluded")
    reasoning_tokens: Count | None = None
    embedding_tokens: Count | None = None
    image_count: Count | None = None
    image_size: Name | None = Field(None, description="for example 1024x1024")
    video_seconds: ExactDecimal | None = None
    video_resolution: Name | None = Field(None, description="for example 720p")
    audio_seconds: ExactDecimal | None = None
    agent_steps: Count | None = None
    tool_calls: Count | None = None
    api_calls: Count | None = None


CLOUDEVENTS_TYPE: Final = "com.tokenhub.usage.v1"


class UsageReported(BaseModel):
    """A CloudEvents 1.0 usage event; `source` + `id` is the idempotency key.
    Extension attributes are kept (CloudEvents allows them at the top level)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    TYPE: ClassVar[str] = CLOUDEVENTS_TYPE

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=ID_LENGTH_MAX)
    source: str = Field(min_length=1, max_length=SOURCE_LENGTH_MAX)
    type: Literal["com.tokenhub.usage.v1"]
    time: UsageTime
    subject: str | None = Field(None, max_length=SOURCE_LENGTH_MAX)
    datacontenttype: Literal["application/json"] | None = None
    data: UsageData

    @property
    def idempotency_key(self) -> str:
        return f"{self.source}\x1f{self.id}"


# --- metering --------------------------------------------------------------------

class TokenConsumed(Event):
    """Token consumption billed to exactly one payer (docs/architecture.md decision 1)."""

    TYPE: ClassVar[str] = "tokens.consumed"
    type: Literal["tokens.consumed"] = "tokens.consumed"
    usage_source: str
    usage_id: str
    payer_bu: BuId
    consumer_bu: BuId
    provider_bu: BuId
    app: Name | None = None
    product: Name | None = None
    model: Name
    tokens: dict[TokenClass, Quantity] = Field(description="this payer's Tokens per class")
    request_input_tokens: Quantity = Field(description="the whole request's input, which selects the context tier")
    raw_units: dict[str, ExactDecimal] = Field(default_factory=dict, description="units measured, for the record")
    conversion_version: int | None = None
    share_percent: ExactDecimal = Decimal(100)
    payer_index: int = Field(0, ge=0, description="position of this payer among the event's payers")
    payer_count: int = Field(1, ge=1)
    funding_agreement_id: str | None = None

    @model_validator(mode="after")
    def _canonical_class_order(self) -> TokenConsumed:
        names = list(self.tokens)
        ordered = sorted(names, key=class_order)
        if ordered != names:
            object.__setattr__(self, "tokens", {name: self.tokens[name] for name in ordered})
        return self

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


class UsageRejected(Event):
    """Bad usage, stored with its original bytes and published with its reason."""

    TYPE: ClassVar[str] = "usage.rejected"
    type: Literal["usage.rejected"] = "usage.rejected"
    reason_code: str
    message: str
    rejected_ref: str = Field(description="id of the stored original in metering's rejected table")
    usage_source: str | None = None
    usage_id: str | None = None
    original_sha256: str


# --- pricing ---------------------------------------------------------------------

class ContextTier(Frozen):
    """The whole request at other prices when its input exceeds a threshold."""

    name: Name
    above_input_tokens: Quantity
    unit_prices_per_million: dict[TokenClass, Amount]


class BuAdjustment(Frozen):
    """A discount or internal transfer price for one payer: prices times `factor`."""

    bu: BuId
    factor: ExactDecimal = Field(description="for example 0.9 for 10 % off")


class PeriodTier(Frozen):
    """One band (from previous up_to, up_to] of a period total in Tokens."""

    up_to_tokens: Quantity | None = Field(None, description="None: open-ended last tier")
    unit_price_per_million: Amount
    flat_fee: Amount = Decimal(0)


class PeriodTiers(Frozen):
    mode: Literal["graduated", "volume"]
    tiers: tuple[PeriodTier, ...]


class ModelPrice(Frozen):
    model: Name
    unit_prices_per_million: dict[TokenClass, Amount]
    context_tiers: tuple[ContextTier, ...] = ()
    bu_adjustments: tuple[BuAdjustment, ...] = ()
    period_tiers: PeriodTiers | None = None
    note: str | None = Field(None, description="how a per-unit price became per-Token, for the record")


class PriceBookPublished(Event):
    """One version of a price book, effective from a time, in the settlement currency."""

    TYPE: ClassVar[str] = "pricebook.published"
    type: Literal["pricebook.published"] = "pricebook.published"
    book_id: Name
    version: int = Field(ge=1)
    effective_from: UtcDatetime
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    rounding: RoundingMode = DEFAULT_ROUNDING
    models: tuple[ModelPrice, ...]
    retroactive: bool = False
    exchange_rate: ExactDecimal | None = Field(None, description="rate used to import a list in another currency")
    source_currency: str | None = None
    actor: Name
    reason: str = Field(min_length=1, max_length=1000)
    published_at: UtcDatetime

    def price_for(self, model: str) -> ModelPrice | None:
        for entry in self.models:
            if entry.model == model:
                return entry
        return None


class PricedLine(Frozen):
    token_class: TokenClass
    tokens: SignedQuantity
    unit_price_per_million: Amount
    amount: Amount


class Priced(Event):
    """Money for one TokenConsumed under one price book version (decision 6)."""

    TYPE: ClassVar[str] = "tokens.priced"
    type: Literal["tokens.priced"] = "tokens.priced"
    kind: Literal["charge", "reversal", "correction", "adjustment"] = "charge"
    consumed_id: uuid.UUID
    corrects_id: uuid.UUID | None = Field(None, description="the Priced a reversal or correction replaces")
    payer_bu: BuId
    consumer_bu: BuId
    provider_bu: BuId
    app: Name | None = None
    model: Name
    book_id: Name
    book_version: int
    context_tier: Name | None = None
    price_factor: ExactDecimal | None = None
    currency: str
    lines: tuple[PricedLine, ...]
    total_tokens: SignedQuantity
    total_amount: Amount
    invoice_id: uuid.UUID | None = Field(None, description="an adjustment's invoice (period tier lines)")

    @model_validator(mode="after")
    def _totals_are_sums(self) -> Priced:
        if sum((line.amount for line in self.lines), Decimal(0)) != self.total_amount:
            raise ValueError("total_amount must equal the sum of the lines")
        if sum(line.tokens for line in self.lines) != self.total_tokens:
            raise ValueError("total_tokens must equal the sum of the lines")
        return self


# --- ledger ----------------------------------------------------------------------

class Posting(Frozen):
    ledger: Literal["money", "tokens"]
    account: str
    debit: Amount = Decimal(0)
    credit: Amount = Decimal(0)


class LedgerPosted(Event):
    """A journal entry as posted, with its place in the payer's hash chain."""

    TYPE: ClassVar[str] = "ledger.posted"
    type: Literal["ledger.posted"] = "ledger.posted"
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
    lines: tuple[PricedLine, ...]
    amount: Amount
    tokens: SignedQuantity
    postings: tuple[Posting, ...]
    chain: BuId
    sequence: int = Field(ge=1)
    entry_hash: str
    previous_hash: str
    posted_at: UtcDatetime
    invoice_id: uuid.UUID | None = Field(None, description="an adjustment's invoice (period tier lines)")
    overage: Literal[True] | None = Field(
        None, description="true: usage posted while its payer's quota for its month was exhausted; billed all the "
                          "same. Absent otherwise, so entries posted before the mark existed hash as they did")


# --- invoicing -------------------------------------------------------------------

class InvoiceLine(Frozen):
    """Tokens and money of one provider x consumer x model x token class at one
    unit price; adjustments name the period their usage belonged to."""

    kind: Literal["usage", "adjustment", "credit", "period_tier"] = Field(
        description="credit: reversals of earlier charges (repricing); adjustment: usage of an earlier period")
    period: str
    provider_bu: BuId
    consumer_bu: BuId
    model: Name
    token_class: TokenClass | None = None
    tokens: SignedQuantity
    unit_price_per_million: Amount | None = None
    amount: Amount
    overage: Literal[True] | None = Field(
        None, description="true: usage posted while the payer's quota was exhausted; part of the total, never charged twice")


class ChainHeadRef(Frozen):
    chain: BuId
    sequence: int
    entry_hash: str


class InvoiceIssued(Event):
    """An issued invoice: immutable; later usage goes on the next one."""

    TYPE: ClassVar[str] = "invoice.issued"
    type: Literal["invoice.issued"] = "invoice.issued"
    invoice_id: uuid.UUID
    number: int = Field(ge=1, description="per payer, without gaps")
    payer_bu: BuId
    period: str
    period_start: UtcDatetime
    period_end: UtcDatetime
    status: Literal["draft", "issued", "credited"]
    currency: str
    lines: tuple[InvoiceLine, ...]
    consumer_subtotals: dict[str, Amount]
    subtotal: Amount = Field(description="exact sum of the lines")
    rounding: Amount = Field(description="total minus subtotal: the one rounding")
    total: Amount = Field(description="subtotal rounded once to the minor unit")
    rounding_mode: RoundingMode
    postings_count: int
    chain_heads: tuple[ChainHeadRef, ...]
    issued_at: UtcDatetime | None = None


EventT = TypeVar("EventT", bound=BaseModel)


class MissingFields(ValueError):
    """`unchecked` was given other fields than the model has."""


def unchecked(model: type[EventT], values: dict[str, Any]) -> EventT:
    """A model from values that are valid already, every field given: what
    `model_construct` makes, without its per-field loop (about 8 µs a model,
    which the ledger paid five times per entry). Only for values taken from
    validated events or computed from them; a test holds the result equal to
    the validated model."""
    if values.keys() != _field_names(model):
        raise MissingFields(f"{model.__name__}: {sorted(_field_names(model) ^ set(values))}")
    instance = model.__new__(model)
    _set = object.__setattr__
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """A model's field names, once: `model_fields` is a deprecation-checking
    property that costs about half a microsecond an access."""
    return frozenset(model.model_fields)


def _known_fields_only(model: type[BaseModel], data: Any) -> Any:
    """Drop fields a newer minor version added, recursively through nested models."""
    if not isinstance(data, dict):
        return data
    kept: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        kept[name] = _known_nested(field.annotation, data[name])
    return kept


def _known_nested(annotation: Any, value: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, Frozen) and isinstance(value, dict):
        return _known_fields_only(annotation, value)
    arguments = getattr(annotation, "__args__", ())
    nested = [argument for argument in arguments if isinstance(argument, type) and issubclass(argument, Frozen)]
    if len(nested) == 1:
        if isinstance(value, list):
            return [_known_nested(nested[0], item) for item in value]
        if isinstance(value, dict):
            return _known_fields_only(nested[0], value)
    return value


def decode(model: type[EventT], raw: bytes | str | dict[str, Any]) -> EventT:
    """Read an internal-topic event, tolerating fields from a newer minor version.
    The strict parse is tried first: it is the common case and pydantic-core
    parses the bytes itself; only a payload with fields we do not know pays for
    the recursive filtering."""
    if isinstance(raw, (bytes, str)):
        try:
            return model.model_validate_json(raw)
        except ValidationError as error:
            if not any(detail["type"] == "extra_forbidden" for detail in error.errors()):
                raise
        raw = orjson.loads(raw)
    return model.model_validate(_known_fields_only(model, raw))


EVENT_MODELS: Final[tuple[type[BaseModel], ...]] = (
    UsageReported,
    TokenConsumed,
    UsageRejected,
    PriceBookPublished,
    Priced,
    LedgerPosted,
    InvoiceIssued,
)
