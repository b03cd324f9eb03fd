"""The compiled codecs of the internal hops (`contracts.codecs`) and the pydantic
models write the same canonical bytes, for the golden files and for generated
events; what the hot path builds without validation (metering's TokenConsumed,
pricing's Priced) equals what validation builds; and pricing gives the same
Priced from a TokenConsumed decoded either way, or rebuilt from its Priced."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import QUANTITY_MAX, Priced, PricedLine, PriceBookPublished, TokenConsumed, decode
from tokenhub.contracts.tokens import KNOWN_CLASSES
from tokenhub.services.metering.domain import RawUsage, meter
from tokenhub.services.pricing.domain import price
from tokenhub.services.pricing.reprice import consumption_of, reverse
from tests.contract.examples import BOOK, CATALOGUE, GOLDEN_DIR, LIMITS, USAGE

CONSUMED_GOLDEN = sorted(GOLDEN_DIR.glob("token_consumed*.json"))
PRICED_GOLDEN = sorted(GOLDEN_DIR.glob("priced*.json"))

slugs = st.from_regex(r"[a-z0-9]{1,10}(-[a-z0-9]{1,8}){0,2}", fullmatch=True)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]))
exact = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), allow_nan=False, allow_infinity=False, places=6)
amounts = st.decimals(min_value=Decimal("-1e12"), max_value=Decimal("1e12"), allow_nan=False, allow_infinity=False,
                      places=12)
classes = st.sampled_from(KNOWN_CLASSES) | st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)


@st.composite
def consumed_events(draw: st.DrawFn) -> TokenConsumed:
    tokens = draw(st.dictionaries(classes, st.integers(0, QUANTITY_MAX), min_size=1, max_size=6))
    return TokenConsumed(
        id=draw(st.uuids()), schema_version=draw(st.integers(1, 3)), event_time=draw(times), cause_id=draw(names),
        usage_source=draw(names), usage_id=draw(names), payer_bu=draw(slugs), consumer_bu=draw(slugs),
        provider_bu=draw(slugs), app=draw(st.none() | names), product=draw(st.none() | names), model=draw(names),
        tokens=tokens, request_input_tokens=draw(st.integers(0, QUANTITY_MAX)),
        raw_units=draw(st.dictionaries(st.from_regex(r"[a-z_]{1,20}", fullmatch=True), exact, max_size=4)),
        conversion_version=draw(st.none() | st.integers(1, 10_000)), share_percent=draw(exact),
        payer_index=draw(st.integers(0, 20)), payer_count=draw(st.integers(1, 21)),
        funding_agreement_id=draw(st.none() | names),
    )


@st.composite
def priced_events(draw: st.DrawFn) -> Priced:
    lines = tuple(
        PricedLine(token_class=token_class, tokens=draw(st.integers(-10**12, 10**12)),
                   unit_price_per_million=draw(amounts), amount=draw(amounts))
        for token_class in draw(st.lists(classes, min_size=1, max_size=6, unique=True)))
    return Priced(
        id=draw(st.uuids()), event_time=draw(times), cause_id=draw(names),
        kind=draw(st.sampled_from(["charge", "reversal", "correction", "adjustment"])), consumed_id=draw(st.uuids()),
        corrects_id=draw(st.none() | st.uuids()), payer_bu=draw(slugs), consumer_bu=draw(slugs), provider_bu=draw(slugs),
        app=draw(st.none() | names), model=draw(names), book_id=draw(names), book_version=draw(st.integers(1, 1000)),
        context_tier=draw(st.none() | names), price_factor=draw(st.none() | exact), currency="CNY", lines=lines,
        total_tokens=sum(line.tokens for line in lines), total_amount=sum((line.amount for line in lines), Decimal(0)),
        invoice_id=draw(st.none() | st.uuids()),
    )


@pytest.mark.parametrize("path", CONSUMED_GOLDEN, ids=lambda path: path.name)
def test_golden_token_consumed_is_the_same_bytes_through_either_codec(path) -> None:  # noqa: ANN001
    golden = path.read_bytes().strip()
    assert canonical_json(decode(TokenConsumed, golden)) == golden
    assert codecs.encode(codecs.decode_consumed(golden)) == golden
    assert codecs.encode_consumed(decode(TokenConsumed, golden)) == golden


@pytest.mark.parametrize("path", PRICED_GOLDEN, ids=lambda path: path.name)
def test_golden_priced_is_the_same_bytes_through_either_codec(path) -> None:  # noqa: ANN001
    golden = path.read_bytes().strip()
    assert canonical_json(decode(Priced, golden)) == golden
    assert codecs.encode(codecs.decode_priced(golden)) == golden
    assert codecs.encode_priced(decode(Priced, golden)) == golden


@given(consumed_events())
def test_generated_token_consumed_is_the_same_bytes_through_either_codec(event: TokenConsumed) -> None:
    canonical = canonical_json(event)
    assert codecs.encode_consumed(event) == canonical
    wire = codecs.decode_consumed(canonical)
    assert codecs.encode(wire) == canonical
    assert canonical_json(decode(TokenConsumed, codecs.encode(wire))) == canonical


@given(priced_events())
def test_generated_priced_is_the_same_bytes_through_either_codec(event: Priced) -> None:
    canonical = canonical_json(event)
    assert codecs.encode_priced(event) == canonical
    wire = codecs.decode_priced(canonical)
    assert codecs.encode(wire) == canonical
    assert canonical_json(decode(Priced, codecs.encode(wire))) == canonical


@given(st.dictionaries(st.sampled_from(["input", "cache_read", "output", "reasoning"]), st.integers(0, 10**9),
                       min_size=1).filter(lambda tokens: sum(tokens.values()) > 0),
       st.sampled_from(["taobao-tmall", "quark"]))
def test_pricing_built_without_validation_equals_the_validated_model_whichever_way_its_input_came(
        tokens: dict[str, int], payer: str) -> None:
    consumed = TokenConsumed.model_validate({**decode(TokenConsumed, (GOLDEN_DIR / "token_consumed.json").read_bytes())
                                            .model_dump(), "tokens": tokens, "payer_bu": payer,
                                             "request_input_tokens": sum(tokens.get(name, 0) for name in
                                                                         ("input", "cache_read", "cache_write"))})
    priced = price(consumed, BOOK)
    assert priced == Priced.model_validate(priced.model_dump())
    assert codecs.encode_priced(priced) == canonical_json(Priced.model_validate(priced.model_dump()))
    # The same Priced from the compiled decoder's struct, and from the Priced itself as repricing rebuilds it.
    assert price(codecs.decode_consumed(canonical_json(consumed)), BOOK) == priced
    assert price(consumption_of(priced, consumed.request_input_tokens), BOOK) == priced
    reversal = reverse(priced, BOOK.book_id, 2)
    assert codecs.encode_priced(reversal) == canonical_json(reversal)


@given(st.integers(1, 10**12), st.integers(0, 10**9), st.integers(0, 10**6))
def test_metering_built_without_validation_equals_the_validated_model(input_tokens: int, output: int, reasoning: int) -> None:
    usage = USAGE.model_copy(update={"data": USAGE.data.model_copy(update={
        "input_tokens": input_tokens, "output_tokens": output, "reasoning_tokens": reasoning, "cache_read_tokens": None})})
    for event in meter(RawUsage(canonical_json(usage)), CATALOGUE, LIMITS).consumed:
        assert event == TokenConsumed.model_validate(event.model_dump())
        assert codecs.encode_consumed(event) == canonical_json(TokenConsumed.model_validate(event.model_dump()))


def test_the_compiled_decoder_refuses_what_the_contract_refuses_and_passes_the_rest_to_it() -> None:
    golden = decode(TokenConsumed, (GOLDEN_DIR / "token_consumed.json").read_bytes())
    document = golden.model_dump(mode="json")
    for change in ({"tokens": {"input": -1}}, {"tokens": {"input": QUANTITY_MAX + 1}},
                   {"event_time": "2026-03-14T02:30:15"}, {"payer_bu": ""}, {"tokens": {"input": 1.5}}):
        with pytest.raises(ValueError):
            codecs.decode_consumed(canonical_json({**document, **change}))
    # A field the canonical form always writes, left out by another producer: the contract's default applies.
    without_version = {name: value for name, value in document.items() if name != "schema_version"}
    assert codecs.decode_consumed(canonical_json(without_version)).schema_version == 1
    # A field a newer minor version added is ignored, as the contract's tolerant decoder does.
    assert codecs.decode_consumed(canonical_json({**document, "carbon_grams": "1.5"})) == codecs.consumed_wire(golden)
    assert isinstance(codecs.decode_consumed(canonical_json(document)).id, uuid.UUID)
    with pytest.raises(msgspec.DecodeError):
        codecs.decode_consumed(b"not json")
