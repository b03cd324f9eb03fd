"""The compiled codecs of the internal hops (`contracts.codecs`) and the pydantic
models write the same canonical bytes, for the golden files and for generated
events; what the hot path builds without validation (metering's TokenConsumed,
pricing's Priced, the ledger's LedgerPosted) equals what validation builds;
pricing gives the same Priced from a TokenConsumed decoded either way, or
rebuilt from its Priced; and the ledger posts the same entry, byte for byte,
whether a Priced took its compiled path or the contract's model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import (
    QUANTITY_MAX,
    LedgerPosted,
    Posting,
    Priced,
    PricedLine,
    PriceBookPublished,
    TokenConsumed,
    decode,
)
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.tokens import KNOWN_CLASSES
from tokenhub.services.ledger import domain as ledger
from tokenhub.services.metering.domain import RawUsage, meter
from tokenhub.services.pricing.domain import price
from tokenhub.services.pricing.reprice import consumption_of, reverse
from tests.contract.examples import BOOK, CATALOGUE, GOLDEN_DIR, LIMITS, USAGE

CONSUMED_GOLDEN = sorted(GOLDEN_DIR.glob("token_consumed*.json"))
PRICED_GOLDEN = sorted(GOLDEN_DIR.glob("priced*.json"))
POSTED_GOLDEN = sorted(GOLDEN_DIR.glob("ledger_posted*.json"))

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
        payload = codecs.encode(event)
        validated = TokenConsumed.model_validate(orjson.loads(payload))
        assert canonical_json(validated) == payload
        assert codecs.consumed_wire(validated) == event


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


# --- the ledger: LedgerPosted on the compiled path ---------------------------------------

def _validated_entry(priced: Priced, head: ledger.ChainHead, posted_at: datetime, overage: bool) -> LedgerPosted:
    """The entry as the contract's model builds it, validated field by field:
    the reference the ledger's compiled path must equal byte for byte."""
    unhashed = LedgerPosted(
        id=derive_id("posted", str(priced.id)), event_time=priced.event_time, cause_id=str(priced.id),
        priced_id=priced.id, kind=priced.kind, corrects_id=priced.corrects_id, payer_bu=priced.payer_bu,
        consumer_bu=priced.consumer_bu, provider_bu=priced.provider_bu, app=priced.app, model=priced.model,
        book_id=priced.book_id, book_version=priced.book_version, currency=priced.currency, lines=priced.lines,
        amount=priced.total_amount, tokens=priced.total_tokens,
        postings=tuple(Posting.model_validate(posting.model_dump()) for posting in ledger.postings_for(priced)),
        chain=head.chain, sequence=head.sequence + 1, entry_hash="", previous_hash=head.head_hash, posted_at=posted_at,
        invoice_id=priced.invoice_id, overage=True if overage else None)
    return unhashed.model_copy(update={"entry_hash": ledger.hash_entry(ledger.hashed_content(unhashed), head.head_hash)})


@pytest.mark.parametrize("path", POSTED_GOLDEN, ids=lambda path: path.name)
def test_golden_ledger_posted_is_the_same_bytes_through_either_codec(path) -> None:  # noqa: ANN001
    golden = path.read_bytes().strip()
    assert canonical_json(decode(LedgerPosted, golden)) == golden
    assert codecs.encode(codecs.decode_posted(golden)) == golden
    assert codecs.encode(codecs.posted_wire(decode(LedgerPosted, golden))) == golden


@pytest.mark.parametrize("path", PRICED_GOLDEN, ids=lambda path: path.name)
@pytest.mark.parametrize("overage", [False, True])
def test_the_ledger_posts_a_golden_priced_as_the_validated_model_does(path, overage: bool) -> None:  # noqa: ANN001
    golden = path.read_bytes().strip()
    wire, payload = ledger.read_priced(golden)
    assert payload == golden and ledger._as_the_contract_writes(wire, golden), "canonical input takes the compiled path"
    priced = decode(Priced, golden)
    head = ledger.ChainHead(priced.payer_bu, 11, "5e" * 32)
    posted_at = datetime(2026, 3, 14, 3, 0, 0, 250000, tzinfo=UTC)
    posted = ledger.post_batch([wire], {priced.payer_bu: head}, posted_at, [overage])
    assert posted.payloads == [canonical_json(_validated_entry(priced, head, posted_at, overage))]
    assert codecs.encode(posted.posted[0]) == posted.payloads[0]


posting_times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2100, 1, 1),
                             timezones=st.sampled_from([UTC, timezone(timedelta(hours=8))]))


@given(priced_events(), st.integers(0, 10**6), posting_times, st.booleans())
def test_the_ledger_posts_a_generated_priced_as_the_validated_model_does(event: Priced, sequence: int,
                                                                         posted_at: datetime, overage: bool) -> None:
    """The ledger's compiled path (msgspec decoding, the entry built and encoded
    as a struct) against the contract's models validated field by field: the
    same canonical bytes, so the same hash and chain."""
    canonical = canonical_json(event)
    wire, payload = ledger.read_priced(canonical)
    assert payload == canonical and ledger._as_the_contract_writes(wire, canonical)
    head = ledger.ChainHead(event.payer_bu, sequence, "a7" * 32)
    (entry,), (entry_bytes,), heads, (movements,) = ledger.post_batch([wire], {event.payer_bu: head}, posted_at,
                                                                       [overage])
    expected = _validated_entry(event, head, posted_at.astimezone(UTC), overage)
    assert entry_bytes == canonical_json(expected) == codecs.encode(codecs.posted_wire(expected))
    assert decode(LedgerPosted, entry_bytes) == expected
    assert heads[event.payer_bu] == ledger.ChainHead(event.payer_bu, sequence + 1, expected.entry_hash)
    assert movements == ledger.transfer(expected) == ledger.transfer(entry)
    assert ledger.rebuild_entry(payload, event.payer_bu, sequence + 1, head.head_hash, posted_at, overage) == (
        entry, entry_bytes)


@given(priced_events(), st.sampled_from(["spaced", "offset", "short_amounts", "unknown_field", "defaults_left_out"]))
def test_a_priced_not_written_canonically_posts_as_the_contract_reads_it(event: Priced, form: str) -> None:
    """Input the contract's model reads differently from the compiled decoder
    (not in the canonical form) goes through the model, so the bytes posted are
    the canonical ones whatever form the Priced came in."""
    canonical = canonical_json(event)
    document = orjson.loads(canonical)
    if form == "spaced":
        value = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    elif form == "offset":
        value = canonical_json(document | {"event_time": event.event_time.astimezone(timezone(timedelta(hours=8))).isoformat()})
    elif form == "short_amounts":
        value = canonical_json(document | {"total_amount": f"{event.total_amount.normalize():f}",
                                           "lines": [line | {"amount": f"{Decimal(line['amount']).normalize():f}"}
                                                     for line in document["lines"]]})
    elif form == "unknown_field":
        value = canonical_json(document | {"carbon_grams": "1.5"})
    else:
        value = canonical_json({name: item for name, item in document.items() if name not in ("kind", "schema_version")}
                               ) if event.kind == "charge" and event.schema_version == 1 else canonical
    wire, payload = ledger.read_priced(value)
    assert payload == canonical and codecs.encode(wire) == canonical
    now = datetime(2026, 3, 14, 3, 0, tzinfo=UTC)
    assert ledger.post_batch([wire], {}, now).payloads == ledger.post_batch([event], {}, now).payloads


def test_the_ledger_refuses_a_priced_the_contract_refuses() -> None:
    golden = orjson.loads((GOLDEN_DIR / "priced.json").read_bytes())
    for change in ({"payer_bu": "Not A Slug"}, {"total_amount": "1.000000000000"},
                   {"total_tokens": golden["total_tokens"] + 1}, {"lines": [golden["lines"][0] | {"token_class": "Input"}]}):
        with pytest.raises(ValueError):
            ledger.read_priced(canonical_json(golden | change))
    for value in (b"not json", canonical_json(golden | {"price_factor": "abc"})):
        with pytest.raises(ValueError):
            ledger.read_priced(value)
