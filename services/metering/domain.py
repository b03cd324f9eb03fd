"""Metering's functional core: raw usage in, Token consumption or a reason out.

Pure: no I/O, no clock, no logging. The shell passes `now` and the state it
loaded (catalogue, conversion tables, funding agreements).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

import msgspec
import orjson
from pydantic import ValidationError

from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.codecs import ConsumedWire, UsageDataWire, UsageWire
from tokenhub.contracts.events import QUANTITY_MAX, UsageData, UsageRejected, UsageReported
from tokenhub.contracts.ids import check_slug, consumed_id, derive_id
from tokenhub.contracts.money import OutOfRange, split_largest_remainder, to_decimal
from tokenhub.contracts.registry import ConversionTable, FundingAgreement, ModelEntry
from tokenhub.contracts.tokens import class_order, context_input_tokens


class Reason:
    """Machine-readable reason codes for rejected usage."""

    NOT_JSON: Final = "not_json"
    NOT_UTF8: Final = "not_utf8"
    NOT_AN_INTEGER: Final = "not_an_integer"
    INVALID_TIME: Final = "invalid_time"
    MISSING_FIELD: Final = "missing_field"
    INVALID_FIELD: Final = "invalid_field"
    UNKNOWN_FIELD: Final = "unknown_field"
    UNKNOWN_BU: Final = "unknown_bu"
    UNKNOWN_MODEL: Final = "unknown_model"
    NEGATIVE_QUANTITY: Final = "negative_quantity"
    ABSURD_QUANTITY: Final = "absurd_quantity"
    EMPTY_USAGE: Final = "empty_usage"
    CLASS_NOT_OFFERED: Final = "class_not_offered"
    NO_CONVERSION: Final = "no_conversion"
    TIME_WITHOUT_ZONE: Final = "time_without_zone"
    TIME_IN_FUTURE: Final = "time_in_future"
    TIME_TOO_OLD: Final = "time_too_old"
    OVERSIZED: Final = "oversized"
    CONFLICTING_DUPLICATE: Final = "conflicting_duplicate"


ALL_REASONS: Final = tuple(value for name, value in vars(Reason).items() if name.isupper())

TEXT_FIELDS: Final = {
    "input_tokens": "input",
    "cache_read_tokens": "cache_read",
    "cache_write_tokens": "cache_write",
    "output_tokens": "output",
    "reasoning_tokens": "reasoning",
    "embedding_tokens": "input",  # an embedding request's tokens are its input
}

# (usage field, conversion unit, qualifier field): non-text units become Tokens.
UNIT_FIELDS: Final = (
    ("image_count", "image", "image_size"),
    ("video_seconds", "video_second", "video_resolution"),
    ("audio_seconds", "audio_second", None),
    ("agent_steps", "agent_step", None),
    ("tool_calls", "tool_call", None),
    ("api_calls", "api_call", None),
)

CE_HEADER_PREFIX: Final = "ce_"


@dataclass(frozen=True)
class Catalogue:
    business_units: frozenset[str]
    models: dict[str, ModelEntry]
    conversion_tables: tuple[ConversionTable, ...] = ()  # ordered by effective_from
    funding: tuple[FundingAgreement, ...] = ()

    def conversion_at(self, moment: datetime) -> ConversionTable | None:
        in_force = [table for table in self.conversion_tables if table.effective_from <= moment]
        return max(in_force, key=lambda table: (table.effective_from, table.version), default=None)

    def funding_for(self, consumer_bu: str, app: str | None, model: str, moment: datetime) -> FundingAgreement | None:
        matching = [rule for rule in self.funding if rule.applies(consumer_bu, app, model, moment)]
        return max(matching, key=lambda rule: (rule.specificity, rule.effective_from, rule.agreement_id), default=None)


@dataclass(frozen=True)
class Limits:
    now: datetime
    accepted_window: timedelta
    future_skew: timedelta
    message_bytes_max: int


@dataclass(frozen=True)
class Rejection:
    reason_code: str
    message: str
    usage_source: str | None = None
    usage_id: str | None = None
    content_sha256: str | None = None
    """Of the usage, when it was well formed: a copy of usage accepted before is a
    duplicate, whatever the registry or the clock say now."""


Usage = UsageReported | UsageWire
"""A valid usage event: read by the compiled path (`read_usage`), or by the
contract's model when the compiled path could not be certain to read it the same."""


@dataclass(frozen=True)
class Metered:
    """An accepted usage event: its idempotency key, content hash and consumption
    (one TokenConsumed per payer, in the wire form the contract writes)."""

    usage: Usage
    content_sha256: str
    consumed: tuple[ConsumedWire, ...]
    canonical: bytes
    """The usage's canonical form, which `content_sha256` hashes."""


@dataclass(frozen=True)
class RawUsage:
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)


class UsageError(Exception):
    def __init__(self, reason_code: str, message: str, usage_source: str | None = None, usage_id: str | None = None,
                 content_sha256: str | None = None):
        super().__init__(message)
        self.rejection = Rejection(reason_code, message, usage_source, usage_id, content_sha256)


def rejected_id(raw: RawUsage, reason_code: str) -> str:
    """Deterministic: the same bad bytes rejected for the same reason are stored once."""
    return str(derive_id("rejected", sha256_hex(raw.value), sha256_hex(canonical_json(sorted_headers(raw))), reason_code))


def sorted_headers(raw: RawUsage) -> dict[str, str]:
    return {name: _header_text(value) for name, value in sorted(raw.headers)}


def _header_text(value: bytes | None) -> str:
    if value is None:
        return ""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()


def header_value(text: str) -> bytes:
    """The stored header text back to the bytes that were received."""
    if text.startswith("base64:"):
        return base64.b64decode(text.removeprefix("base64:"))
    return text.encode()


STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
"""The Kafka binding's structured mode: the whole event is the value. Without
this content type, `ce_*` headers carry the attributes and the value is the data."""


def parse_envelope(raw: RawUsage) -> dict[str, object]:
    """The CloudEvent as a dict, from either content mode of the Kafka binding:
    structured (content type application/cloudevents+json: all in the value,
    whatever other headers say) or binary (`ce_*` headers, data in the value).
    Attributes, headers and the value must be valid UTF-8."""
    attributes: dict[str, object] = {}
    content_type = ""
    for name, value in raw.headers:
        try:
            text = (value or b"").decode()
        except UnicodeDecodeError:
            raise UsageError(Reason.NOT_UTF8, f"header {name} is not valid UTF-8") from None
        if name.startswith(CE_HEADER_PREFIX):
            attributes[name[len(CE_HEADER_PREFIX):]] = text
        elif name.lower() == "content-type":
            content_type = text
    try:
        body = orjson.loads(raw.value)
    except orjson.JSONDecodeError as error:
        try:
            raw.value.decode()
        except UnicodeDecodeError:
            raise UsageError(Reason.NOT_UTF8, "value is not valid UTF-8") from None
        raise UsageError(Reason.NOT_JSON, f"value is not JSON: {error}") from None
    structured = content_type.split(";", 1)[0].strip().lower() == STRUCTURED_CONTENT_TYPE
    if attributes and not structured:
        attributes["data"] = body
        return attributes
    if not isinstance(body, dict):
        raise UsageError(Reason.INVALID_FIELD, "a structured CloudEvent must be a JSON object")
    return body


def structured(raw: RawUsage, metered: Metered) -> bytes:
    """Accepted usage as one value, to publish on usage.reported without headers:
    the bytes received when they are the whole event (structured mode), the
    event's canonical form when its attributes came as headers (binary mode)."""
    if any(name.startswith(CE_HEADER_PREFIX) for name, _ in raw.headers):
        return metered.canonical
    return raw.value


_INTEGER_ERRORS: Final = frozenset({"int_type", "int_parsing", "int_from_float"})
SHOWN_CHARACTERS_MAX: Final = 64
"""Of a refused value in a reason's message: enough to recognise it, never the whole of a flood."""


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode() if isinstance(value, bool | int | float | str) else repr(value)
    return text if len(text) <= SHOWN_CHARACTERS_MAX else text[:SHOWN_CHARACTERS_MAX] + "..."


def _reason_for(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "missing":
        return Reason.MISSING_FIELD, f"missing field {location}"
    if kind == "extra_forbidden":
        return Reason.UNKNOWN_FIELD, f"unknown field {location}: quantities we do not understand are not dropped"
    if kind in ("timezone_aware", "time_without_zone"):
        return Reason.TIME_WITHOUT_ZONE, f"{location} has no time zone"
    if kind == "invalid_time":
        return Reason.INVALID_TIME, f"{location} {first['msg']}, got {_shown(first['input'])}"
    if kind in _INTEGER_ERRORS:
        return Reason.NOT_AN_INTEGER, f"{location} must be a JSON integer, got {_shown(first['input'])}"
    if kind in ("greater_than_equal", "greater_than"):
        return Reason.NEGATIVE_QUANTITY, f"{location} must not be negative"
    if kind in ("less_than_equal", "less_than"):
        return Reason.ABSURD_QUANTITY, f"{location} is larger than any real request"
    if isinstance(first.get("ctx", {}).get("error"), OutOfRange):
        return Reason.ABSURD_QUANTITY, f"{location} has more digits than any real quantity, got {_shown(first['input'])}"
    return Reason.INVALID_FIELD, f"{location}: {first['msg']}"


def validate_envelope(envelope: dict[str, object]) -> UsageReported:
    source = envelope.get("source") if isinstance(envelope.get("source"), str) else None
    usage_id = envelope.get("id") if isinstance(envelope.get("id"), str) else None
    try:
        return UsageReported.model_validate(envelope)
    except ValidationError as error:
        reason_code, message = _reason_for(error)
        raise UsageError(reason_code, message, source, usage_id) from None  # type: ignore[arg-type]


_COMPILED_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
"""The usage times the compiled path parses itself: RFC 3339 with an upper-case
`T`, at most microseconds and an offset, which `datetime.fromisoformat` reads
exactly as the contract's model does (a unit test holds them equal, offsets and
calendar edges included; Python alone would also take an offset of `+00:60`).
Any other form, valid or not, goes to the model."""

_DECIMAL_FIELDS: Final = ("video_seconds", "audio_seconds")


def read_usage(envelope: dict[str, object]) -> tuple[Usage, bytes]:
    """A usage event and its canonical bytes. The compiled path reads what it is
    certain to read as the contract's model does, with the same values and the
    same canonical bytes; everything else (extension attributes, other time
    forms, exponent decimals, anything invalid) goes to the model, which
    normalises it or says what is wrong with it (`validate_envelope`)."""
    usage = _compiled_usage(envelope)
    if usage is not None:
        return usage, codecs.encode(usage)
    validated = validate_envelope(envelope)
    return validated, canonical_json(validated)


def _compiled_usage(envelope: dict[str, object]) -> UsageWire | None:
    try:
        usage = codecs.read_usage(envelope)
        data = usage.data
        check_slug(data.consumer_bu)
        if _COMPILED_TIME.fullmatch(usage.time) is None:
            return None
        moment = datetime.fromisoformat(usage.time).astimezone(UTC)
        decimals: dict[str, Decimal] = {}
        for name in _DECIMAL_FIELDS:
            value = getattr(data, name)
            if value is not None:
                exact = to_decimal(value)
                if "E" in str(exact):
                    return None  # the contract writes it in plain notation; the encoder would not
                decimals[name] = exact
    except (msgspec.ValidationError, ValueError, OverflowError, ArithmeticError):
        return None  # the model says what is wrong, or reads it its own way (MoneyError is a ValueError)
    if decimals:
        usage = msgspec.structs.replace(usage, data=msgspec.structs.replace(data, **decimals))
    return msgspec.structs.replace(usage, time=moment)


def check_time(usage: Usage, limits: Limits) -> None:
    if usage.time > limits.now + limits.future_skew:
        raise UsageError(Reason.TIME_IN_FUTURE, f"event time {usage.time.isoformat()} is more than "
                         f"{int(limits.future_skew.total_seconds())} s in the future", usage.source, usage.id)
    if usage.time < limits.now - limits.accepted_window:
        raise UsageError(Reason.TIME_TOO_OLD, f"event time {usage.time.isoformat()} is older than the accepted "
                         f"window of {limits.accepted_window.days} days", usage.source, usage.id)


def to_tokens(data: UsageData | UsageDataWire, model: ModelEntry, table: ConversionTable | None) -> tuple[dict[str, int], dict[str, Decimal], int | None]:
    """Token quantities per class, raw units measured, and the conversion version used."""
    tokens: dict[str, int] = {}
    raw_units: dict[str, Decimal] = {}
    for field_name, token_class in TEXT_FIELDS.items():
        quantity = getattr(data, field_name)
        if quantity:
            tokens[token_class] = tokens.get(token_class, 0) + quantity
            raw_units[field_name] = Decimal(quantity)
    used_table = False
    for field_name, unit, qualifier_field in UNIT_FIELDS:
        quantity = getattr(data, field_name)
        if quantity is None or quantity == 0:
            continue
        if quantity < 0:
            raise UsageError(Reason.NEGATIVE_QUANTITY, f"data.{field_name} must not be negative")
        if quantity > QUANTITY_MAX:
            # Checked before converting: a huge exponent would cost seconds of CPU or overflow.
            raise UsageError(Reason.ABSURD_QUANTITY, f"data.{field_name} is larger than any real request")
        qualifier = getattr(data, qualifier_field) if qualifier_field else None
        rule = table.rule_for(unit, qualifier) if table else None
        if rule is None:
            version = f"version {table.version}" if table else "no table"
            raise UsageError(Reason.NO_CONVERSION, f"no conversion for {unit}" + (f":{qualifier}" if qualifier else "")
                             + f" in force ({version})")
        # A partial Token is charged as a whole one: producers measure seconds, not Tokens.
        converted = math.ceil(Decimal(quantity) * rule.tokens_per_unit)
        tokens[rule.token_class] = tokens.get(rule.token_class, 0) + converted
        raw_units[field_name] = Decimal(quantity)
        used_table = True
    absurd = sorted(token_class for token_class, quantity in tokens.items() if quantity > QUANTITY_MAX)
    if absurd or context_input_tokens(tokens) > QUANTITY_MAX:
        raise UsageError(Reason.ABSURD_QUANTITY, f"{', '.join(absurd) or 'request input'} Tokens exceed "
                         f"{QUANTITY_MAX} in one event")
    offered = set(model.token_classes)
    unexpected = sorted(set(tokens) - offered)
    if unexpected:
        raise UsageError(Reason.CLASS_NOT_OFFERED, f"model {model.model_id} does not produce {', '.join(unexpected)} Tokens")
    return tokens, raw_units, (table.version if used_table and table else None)


def meter(raw: RawUsage, catalogue: Catalogue, limits: Limits) -> Metered:
    """Validate one usage event and turn it into one TokenConsumed per payer."""
    if len(raw.value) > limits.message_bytes_max:
        raise UsageError(Reason.OVERSIZED, f"message of {len(raw.value)} bytes exceeds {limits.message_bytes_max}")
    usage, canonical = read_usage(parse_envelope(raw))
    content_sha256 = sha256_hex(canonical)
    try:
        return Metered(usage, content_sha256, _consumption(usage, catalogue, limits), canonical)
    except UsageError as error:
        rejection = error.rejection
        raise UsageError(rejection.reason_code, rejection.message, usage.source, usage.id, content_sha256) from None


def _consumption(usage: Usage, catalogue: Catalogue, limits: Limits) -> tuple[ConsumedWire, ...]:
    check_time(usage, limits)
    data = usage.data
    if data.consumer_bu not in catalogue.business_units:
        raise UsageError(Reason.UNKNOWN_BU, f"unknown business unit {data.consumer_bu}")
    model = catalogue.models.get(data.model)
    if model is None or not model.active:
        raise UsageError(Reason.UNKNOWN_MODEL, f"unknown model or tool {data.model}")
    tokens, raw_units, conversion_version = to_tokens(data, model, catalogue.conversion_at(usage.time))
    if not tokens or sum(tokens.values()) == 0:
        raise UsageError(Reason.EMPTY_USAGE, "usage carries no quantity")
    agreement = catalogue.funding_for(data.consumer_bu, data.app, data.model, usage.time)
    return split_by_payer(usage, model, tokens, raw_units, conversion_version, agreement)


_WHOLE: Final = Decimal(100)
"""The share of a consumer who pays for itself, in percent."""


def split_by_payer(
    usage: Usage,
    model: ModelEntry,
    tokens: dict[str, int],
    raw_units: dict[str, Decimal],
    conversion_version: int | None,
    agreement: FundingAgreement | None,
) -> tuple[ConsumedWire, ...]:
    """One TokenConsumed per payer; each class split by largest remainder so the
    parts sum exactly to the whole (docs/architecture.md decision 1, invariant 6)."""
    data = usage.data
    if agreement is None:  # the usual case: the consumer pays all, nothing to split
        payers = [(data.consumer_bu, _WHOLE)]
        parts_by_class = {token_class: [quantity] for token_class, quantity in tokens.items()}
    else:
        payers = [(share.bu, share.percent) for share in agreement.payers]
        weights = [percent for _, percent in payers]
        parts_by_class = {token_class: split_largest_remainder(quantity, weights) for token_class, quantity in tokens.items()}
    request_input = context_input_tokens(tokens)
    cause = str(derive_id("usage", usage.source, usage.id))
    ordered = sorted(parts_by_class.items(), key=lambda item: class_order(item[0]))
    # Built in the wire form without validation: every value comes from the
    # validated usage, the registry's validated entries or the arithmetic above
    # (quantities checked against QUANTITY_MAX in `to_tokens`); exact decimals in
    # plain notation, as the contract writes them. tests/contract/test_codecs.py
    # holds the bytes equal to the validated model's. Classes in canonical order,
    # as the model's validator puts them.
    units = {name: f"{value:f}" for name, value in raw_units.items()}
    agreement_id = agreement.agreement_id if agreement else None
    payer_count = len(payers)
    consumed = []
    for index, (payer_bu, percent) in enumerate(payers):
        payer_tokens = {token_class: parts[index] for token_class, parts in ordered if parts[index]}
        if not payer_tokens:
            continue  # a payer whose share rounds to no Token at all gets no event; the parts still sum to the whole
        consumed.append(ConsumedWire(
            id=consumed_id(usage.source, usage.id, payer_bu), schema_version=1, event_time=usage.time, cause_id=cause,
            type="tokens.consumed", usage_source=usage.source, usage_id=usage.id, payer_bu=payer_bu,
            consumer_bu=data.consumer_bu, provider_bu=model.provider_bu, app=data.app, product=data.product,
            model=data.model, tokens=payer_tokens, request_input_tokens=request_input, raw_units=units,
            conversion_version=conversion_version, share_percent=f"{percent:f}", payer_index=index,
            payer_count=payer_count, funding_agreement_id=agreement_id))
    return tuple(consumed)


# --- a batch: first sightings, duplicates and conflicts ---------------------------------

UsageKey = tuple[str, str]
"""(source, id): a usage event's idempotency key."""


@dataclass(frozen=True)
class Sorted:
    """A batch's usage sorted by what was seen before: `fresh` is metered now,
    `duplicates` counts exact copies (dropped), `echoes` counts usage that
    metering itself published on usage.reported (HTTP ingest) coming back from
    the topic, and `rejected` holds conflicting copies and bad usage. Items
    carry their position in the batch."""

    fresh: tuple[tuple[int, Metered], ...]
    duplicates: int
    echoes: int
    rejected: tuple[tuple[int, Rejection], ...]


@dataclass(frozen=True)
class Stored:
    """What the store holds for a usage key accepted before."""

    content_sha256: str
    published: bool  # metering published the usage on usage.reported itself: it came over HTTP


def key_of(metered: Metered) -> UsageKey:
    return metered.usage.source, metered.usage.id


def rejection_key(rejection: Rejection) -> UsageKey | None:
    """The key of a well-formed usage event that was refused, which a copy of
    usage accepted before would explain."""
    if rejection.content_sha256 is None or rejection.usage_source is None or rejection.usage_id is None:
        return None
    return rejection.usage_source, rejection.usage_id


def meter_each(raws: Sequence[RawUsage], catalogue: Catalogue, limits: Limits
               ) -> tuple[list[tuple[int, Metered]], list[tuple[int, Rejection]]]:
    """Every message of a batch metered or rejected, with its position in the batch."""
    accepted: list[tuple[int, Metered]] = []
    rejected: list[tuple[int, Rejection]] = []
    for position, raw in enumerate(raws):
        try:
            accepted.append((position, meter(raw, catalogue, limits)))
        except UsageError as error:
            rejected.append((position, error.rejection))
    return accepted, rejected


def first_sightings(accepted: list[tuple[int, Metered]], rejected: list[tuple[int, Rejection]]) -> Sorted:
    """Within one batch: the first copy of each key goes on to be claimed, later
    exact copies are duplicates, later copies with other content are conflicts."""
    first: dict[UsageKey, Metered] = {}
    candidates: list[tuple[int, Metered]] = []
    duplicates = 0
    refused = list(rejected)
    for position, metered in accepted:
        key = key_of(metered)
        seen = first.get(key)
        if seen is None:
            first[key] = metered
            candidates.append((position, metered))
        elif seen.content_sha256 == metered.content_sha256:
            duplicates += 1
        else:
            refused.append((position, conflict(metered)))
    return Sorted(tuple(candidates), duplicates, 0, tuple(refused))


def against_stored(candidates: Sorted, claimed: set[UsageKey], stored: dict[UsageKey, Stored], *,
                   from_topic: bool) -> Sorted:
    """The batch's first sightings against the store: keys claimed now are fresh;
    a key stored before with the same content is a duplicate (an echo when it is
    metering's own copy of HTTP usage back from the topic), with other content a
    conflict. A refused event that is a copy of usage accepted before is a
    duplicate too: the first decision stands, whatever the registry says now."""
    fresh: list[tuple[int, Metered]] = []
    duplicates = candidates.duplicates
    echoes = 0
    rejected: list[tuple[int, Rejection]] = []

    def copy_of_stored(key: UsageKey, content_sha256: str) -> bool:
        nonlocal duplicates, echoes
        before = stored.get(key)
        if before is None or before.content_sha256 != content_sha256:
            return False
        if from_topic and before.published:
            echoes += 1
        else:
            duplicates += 1
        return True

    for position, metered in candidates.fresh:
        key = key_of(metered)
        if key in claimed:
            fresh.append((position, metered))
        elif not copy_of_stored(key, metered.content_sha256):
            rejected.append((position, conflict(metered)))
    for position, rejection in candidates.rejected:
        key = rejection_key(rejection)
        if key is None or rejection.content_sha256 is None or not copy_of_stored(key, rejection.content_sha256):
            rejected.append((position, rejection))
    return Sorted(tuple(fresh), duplicates, echoes, tuple(sorted(rejected, key=lambda item: item[0])))


def conflict(metered: Metered) -> Rejection:
    usage = metered.usage
    return Rejection(Reason.CONFLICTING_DUPLICATE, f"source {usage.source} id {usage.id} was already accepted with "
                     "other content", usage.source, usage.id)


def rejected_event(raw: RawUsage, rejection: Rejection, now: datetime) -> UsageRejected:
    """What is published for a stored bad original: its reason and a reference to it."""
    return usage_rejected(rejected_id(raw, rejection.reason_code), rejection, sha256_hex(raw.value), now)


def usage_rejected(reference: str, rejection: Rejection, original_sha256: str, at: datetime) -> UsageRejected:
    """The UsageRejected of a stored original: from what is stored, the same
    event as was published, so it can be published again after a broker loss."""
    return UsageRejected(
        id=derive_id("usage.rejected", reference),
        event_time=at,
        cause_id=reference,
        reason_code=rejection.reason_code,
        message=rejection.message,
        rejected_ref=reference,
        usage_source=rejection.usage_source,
        usage_id=rejection.usage_id,
        original_sha256=original_sha256,
    )
