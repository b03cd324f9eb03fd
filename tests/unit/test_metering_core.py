"""Metering's pure core: reasons for bad input, conversion, and who pays."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenhub.bench.load import DAY_END_DEFAULT, generate_usage, registry_document
from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.events import QUANTITY_MAX, TokenConsumed, UsageData, UsageReported
from tokenhub.contracts.registry import (
    PAYLOAD_MODELS,
    REGISTRY_SECTIONS,
    ConversionRule,
    ConversionTable,
    FundingAgreement,
    ModelEntry,
    PayerShare,
)
from tokenhub.services.metering import domain as metering
from tokenhub.services.metering.domain import (
    Catalogue,
    Limits,
    Reason,
    RawUsage,
    Rejection,
    Stored,
    UsageError,
    against_stored,
    first_sightings,
    header_value,
    key_of,
    meter,
    meter_each,
    rejected_event,
    rejected_id,
    rejection_key,
    sorted_headers,
)
from tests.contract.examples import CATALOGUE, GOLDEN_DIR, LIMITS, USAGE

T = datetime(2026, 3, 1, tzinfo=UTC)


def _raw(**data_changes) -> RawUsage:  # noqa: ANN003
    event = orjson.loads(canonical_json(USAGE))
    event["data"].update(data_changes)
    return RawUsage(orjson.dumps(event))


def _reason(raw: RawUsage, catalogue=CATALOGUE, limits=LIMITS) -> str:  # noqa: ANN001
    with pytest.raises(UsageError) as caught:
        meter(raw, catalogue, limits)
    return caught.value.rejection.reason_code


def test_reasons_for_bad_quantities() -> None:
    assert _reason(_raw(input_tokens=-1)) == Reason.NEGATIVE_QUANTITY
    assert _reason(_raw(input_tokens=10**14)) == Reason.ABSURD_QUANTITY
    assert _reason(_raw(input_tokens=0, cache_read_tokens=0, output_tokens=0, reasoning_tokens=0)) == Reason.EMPTY_USAGE
    assert _reason(_raw(image_count=1)) == Reason.NO_CONVERSION
    assert _reason(_raw(mystery=1)) == Reason.UNKNOWN_FIELD
    assert _reason(RawUsage(b"[1, 2]")) == Reason.INVALID_FIELD
    assert _reason(RawUsage(b"x" * 70_000)) == Reason.OVERSIZED


def test_the_event_time_window_is_inclusive_of_its_edges() -> None:
    event = orjson.loads(canonical_json(USAGE))
    event["time"] = (LIMITS.now + LIMITS.future_skew).isoformat()
    assert meter(RawUsage(orjson.dumps(event)), CATALOGUE, LIMITS).consumed
    event["time"] = (LIMITS.now + LIMITS.future_skew + timedelta(microseconds=1)).isoformat()
    assert _reason(RawUsage(orjson.dumps(event))) == Reason.TIME_IN_FUTURE
    event["time"] = (LIMITS.now - LIMITS.accepted_window - timedelta(microseconds=1)).isoformat()
    assert _reason(RawUsage(orjson.dumps(event))) == Reason.TIME_TOO_OLD


def test_binary_mode_headers_make_the_same_event_as_structured_mode() -> None:
    structured = meter(RawUsage(canonical_json(USAGE)), CATALOGUE, LIMITS)
    attributes = orjson.loads(canonical_json(USAGE))
    data = attributes.pop("data")
    headers = tuple((f"ce_{name}", str(value).encode()) for name, value in attributes.items())
    binary = meter(RawUsage(orjson.dumps(data), headers), CATALOGUE, LIMITS)
    assert binary.content_sha256 == structured.content_sha256
    assert binary.consumed == structured.consumed


def test_the_most_specific_funding_rule_wins_and_splits_exactly() -> None:
    broad = FundingAgreement(agreement_id="broad", consumer_bu="taobao-tmall", effective_from=T,
                             payers=(PayerShare(bu="qwen-platform", percent=Decimal(100)),))
    narrow = FundingAgreement(agreement_id="narrow", consumer_bu="taobao-tmall", app="search-assistant",
                              model_pattern="qwen-*", effective_from=T,
                              payers=(PayerShare(bu="taobao-tmall", percent=Decimal("50")),
                                      PayerShare(bu="qwen-platform", percent=Decimal("50"))))
    catalogue = CATALOGUE.__class__(CATALOGUE.business_units, CATALOGUE.models, (), (broad, narrow))
    consumed = meter(RawUsage(canonical_json(USAGE)), catalogue, LIMITS).consumed
    assert [event.funding_agreement_id for event in consumed] == ["narrow", "narrow"]
    for token_class, quantity in USAGE.model_dump()["data"].items():
        if token_class.endswith("_tokens") and quantity:
            name = token_class.removesuffix("_tokens")
            assert sum(event.tokens.get(name, 0) for event in consumed) == quantity


def test_conversion_rounds_partial_tokens_up_and_prefers_the_exact_size() -> None:
    table = ConversionTable(version=3, effective_from=T, rules=(
        ConversionRule(unit="image:*", token_class="image", tokens_per_unit=Decimal("1000")),
        ConversionRule(unit="image:1024x1024", token_class="image", tokens_per_unit=Decimal("1290.5")),
    ))
    assert table.rule_for("image", "1024x1024").tokens_per_unit == Decimal("1290.5")
    assert table.rule_for("image", "64x64").tokens_per_unit == Decimal("1000")
    assert table.rule_for("video_second", "720p") is None


VIDEO_CATALOGUE = Catalogue(
    CATALOGUE.business_units,
    {**CATALOGUE.models, "wan-video": ModelEntry(model_id="wan-video", provider_bu="qwen-platform", modality="video",
                                                 token_classes=("video", "image"))},
    (ConversionTable(version=1, effective_from=T - timedelta(days=30), rules=(
        ConversionRule(unit="video_second:*", token_class="video", tokens_per_unit=Decimal("4000")),
        ConversionRule(unit="image:*", token_class="image", tokens_per_unit=Decimal("1290")),
    )),),
)


def _video(**data) -> RawUsage:  # noqa: ANN003
    event = orjson.loads(canonical_json(USAGE))
    event["data"] = {"consumer_bu": "taobao-tmall", "model": "wan-video", **data}
    return RawUsage(orjson.dumps(event))


@pytest.mark.parametrize("data", [
    {"video_seconds": "1e12", "video_resolution": "720p"},  # within the raw bound, 4e15 Tokens after conversion
    {"video_seconds": "1e100000", "video_resolution": "720p"},  # would take seconds of CPU to convert
    {"video_seconds": "1e999999999", "video_resolution": "720p"},  # would overflow the decimal context
    {"image_count": QUANTITY_MAX},
    {"image_count": 10**12, "video_seconds": "1", "video_resolution": "720p"},
])
def test_absurd_non_text_quantities_are_rejected_with_a_reason_not_an_exception(data: dict) -> None:
    assert _reason(_video(**data), catalogue=VIDEO_CATALOGUE) == Reason.ABSURD_QUANTITY


@pytest.mark.parametrize("seconds", ["1e999999999", "-1e999999999", "1e-999999999", "0e-999999999"])
def test_a_decimal_too_long_to_write_out_is_refused_before_anything_writes_it(seconds: str) -> None:
    """In plain notation each would be a billion digits: refused while reading,
    before the content hash formats the usage (which took seconds and a gigabyte)."""
    with pytest.raises(UsageError) as caught:
        meter(_video(video_seconds=seconds, video_resolution="720p"), VIDEO_CATALOGUE, LIMITS)
    rejection = caught.value.rejection
    assert (rejection.reason_code, rejection.message, rejection.content_sha256) == (
        Reason.ABSURD_QUANTITY, f'data.video_seconds has more digits than any real quantity, got "{seconds}"', None)


def test_a_request_input_beyond_the_limit_is_absurd_even_when_each_class_is_not() -> None:
    assert _reason(_raw(input_tokens=QUANTITY_MAX, cache_read_tokens=1)) == Reason.ABSURD_QUANTITY
    assert _reason(_video(video_seconds="-1", video_resolution="720p"), catalogue=VIDEO_CATALOGUE) == Reason.NEGATIVE_QUANTITY
    largest = meter(_video(video_seconds=str(QUANTITY_MAX // 4000), video_resolution="720p"), VIDEO_CATALOGUE, LIMITS)
    assert largest.consumed[0].tokens == {"video": QUANTITY_MAX}


def test_stored_headers_give_back_the_received_bytes_including_non_utf8() -> None:
    raw = RawUsage(b"{}", (("ce_source", b"gateway/taobao"), ("trace", b"\xff\x00\xfe")))
    stored = sorted_headers(raw)
    assert stored["trace"].startswith("base64:")
    assert {name: header_value(text) for name, text in stored.items()} == dict(raw.headers)


def _copy(request: str, **data_changes) -> RawUsage:  # noqa: ANN003
    event = orjson.loads(canonical_json(USAGE))
    event["id"] = request
    event["data"].update(data_changes)
    return RawUsage(orjson.dumps(event))


def test_a_batch_is_sorted_into_fresh_duplicates_and_conflicts_within_it_and_against_the_store() -> None:
    raws = [_copy("a"), _copy("b"), _copy("a"), _copy("a", input_tokens=1), _copy("c"), _copy("d"),
            RawUsage(b"not json"), _copy("e", consumer_bu="no-such-bu"), _copy("f", consumer_bu="no-such-bu")]
    accepted, refused = meter_each(raws, CATALOGUE, LIMITS)
    assert [(position, rejection.reason_code) for position, rejection in refused] == [
        (6, Reason.NOT_JSON), (7, Reason.UNKNOWN_BU), (8, Reason.UNKNOWN_BU)]
    assert [rejection_key(rejection) for _, rejection in refused] == [None, (USAGE.source, "e"), (USAGE.source, "f")]
    within = first_sightings(accepted, refused)
    assert [key_of(metered)[1] for _, metered in within.fresh] == ["a", "b", "c", "d"]
    assert within.duplicates == 1
    assert [(position, rejection.reason_code) for position, rejection in within.rejected] == [
        (6, Reason.NOT_JSON), (7, Reason.UNKNOWN_BU), (8, Reason.UNKNOWN_BU), (3, Reason.CONFLICTING_DUPLICATE)]
    source = USAGE.source
    stored = {(source, "c"): Stored(within.fresh[2][1].content_sha256, published=True),
              (source, "d"): Stored("another content", published=False),
              # e was accepted before the registry lost its BU: a copy of it is a duplicate, not a rejection
              (source, "e"): Stored(refused[1][1].content_sha256, published=False),
              (source, "f"): Stored("another content", published=False)}
    outcome = against_stored(within, {(source, "a"), (source, "b")}, stored, from_topic=True)
    assert [position for position, _ in outcome.fresh] == [0, 1]
    assert (outcome.duplicates, outcome.echoes) == (2, 1)  # a within the batch and e; c is HTTP usage back from the topic
    assert [(position, rejection.usage_id, rejection.reason_code) for position, rejection in outcome.rejected] == [
        (3, "a", Reason.CONFLICTING_DUPLICATE), (5, "d", Reason.CONFLICTING_DUPLICATE), (6, None, Reason.NOT_JSON),
        (8, "f", Reason.UNKNOWN_BU)]
    over_http = against_stored(within, {(source, "a"), (source, "b")}, stored, from_topic=False)
    assert (over_http.duplicates, over_http.echoes) == (3, 0)  # c sent again over HTTP is a plain duplicate


def test_a_rejection_event_names_the_stored_original_deterministically() -> None:
    raw = RawUsage(b"not json", (("ce_source", b"gateway/taobao"),))
    rejection = Rejection(Reason.NOT_JSON, "value is not JSON")
    event = rejected_event(raw, rejection, T)
    assert event == rejected_event(raw, rejection, T)
    assert event.rejected_ref == event.cause_id == rejected_id(raw, Reason.NOT_JSON)
    assert event.original_sha256 == sha256_hex(b"not json")
    assert rejected_event(raw, Rejection(Reason.INVALID_FIELD, "other"), T).rejected_ref != event.rejected_ref


def _envelope(**changes) -> dict:  # noqa: ANN003
    event = orjson.loads(canonical_json(USAGE))
    data = changes.pop("data", {})
    event["data"].update(data)
    event.update(changes)
    return event


@pytest.mark.parametrize(("changes", "reason"), [
    ({"data": {"input_tokens": True}}, Reason.NOT_AN_INTEGER),
    ({"data": {"input_tokens": False}}, Reason.NOT_AN_INTEGER),
    ({"data": {"output_tokens": "12345"}}, Reason.NOT_AN_INTEGER),
    ({"data": {"output_tokens": 1.5}}, Reason.NOT_AN_INTEGER),
    ({"data": {"output_tokens": 10.0}}, Reason.NOT_AN_INTEGER),
    ({"data": {"image_count": "2"}}, Reason.NOT_AN_INTEGER),
    ({"time": 1773453600}, Reason.INVALID_TIME),
    ({"time": 1773453600.5}, Reason.INVALID_TIME),
    ({"time": "2026-03-14 02:30:00+00:00"}, Reason.INVALID_TIME),
    ({"time": "14/03/2026 02:30"}, Reason.INVALID_TIME),
    ({"time": "2026-03-14T02:30:00"}, Reason.TIME_WITHOUT_ZONE),
    ({"time": None}, Reason.INVALID_TIME),
])
def test_counts_are_json_integers_and_times_rfc_3339_strings_with_an_offset(changes: dict, reason: str) -> None:
    raw = RawUsage(orjson.dumps(_envelope(**changes)))
    assert _reason(raw) == reason


def test_what_strict_ingest_accepts() -> None:
    for time in ("2026-03-14T10:30:15+08:00", "2026-03-14T02:30:15.25Z", "2026-03-14t02:30:15.123456z"):
        metered = meter(RawUsage(orjson.dumps(_envelope(time=time))), CATALOGUE, LIMITS)
        assert metered.consumed[0].event_time.utcoffset() == timedelta(0)
    assert meter(RawUsage(orjson.dumps(_envelope(data={"input_tokens": 0}))), CATALOGUE, LIMITS).consumed


def test_attributes_headers_and_values_must_be_utf8_each_with_its_reason() -> None:
    structured = canonical_json(USAGE)
    attributes = [(f"ce_{name}", str(value).encode()) for name, value in orjson.loads(structured).items() if name != "data"]
    data = orjson.dumps(orjson.loads(structured)["data"])
    bad_id = [(name, b"\xffreq" if name == "ce_id" else value) for name, value in attributes]
    assert _reason(RawUsage(data, tuple(bad_id))) == Reason.NOT_UTF8
    assert _reason(RawUsage(structured, (("trace", b"\xff\xfe"),))) == Reason.NOT_UTF8
    assert _reason(RawUsage(b'{"id": "\xff"}')) == Reason.NOT_UTF8
    assert _reason(RawUsage(b"{not json")) == Reason.NOT_JSON


def test_content_mode_follows_the_kafka_binding() -> None:
    structured = canonical_json(USAGE)
    attributes = tuple((f"ce_{name}", str(value).encode()) for name, value in orjson.loads(structured).items()
                       if name != "data")
    data = orjson.dumps(orjson.loads(structured)["data"])
    expected = meter(RawUsage(structured), CATALOGUE, LIMITS)
    # Binary: attributes in ce_ headers, the data in the value.
    assert meter(RawUsage(data, attributes), CATALOGUE, LIMITS).consumed == expected.consumed
    # Structured, by its content type, even with ce_ headers beside it (which it ignores).
    for content_type in (b"application/cloudevents+json", b"application/cloudevents+json; charset=utf-8"):
        headers = (("content-type", content_type), ("ce_id", b"other"), ("ce_source", b"elsewhere"))
        assert meter(RawUsage(structured, headers), CATALOGUE, LIMITS).consumed == expected.consumed


# --- the compiled path against the contract's model -------------------------------------
# `read_usage` takes a compiled path (msgspec, `contracts.codecs.UsageWire`) only for
# input it reads exactly as `UsageReported` does; these tests meter every input both
# ways (the second with the compiled path switched off, so only the contract's model
# reads it) and require the same outcome to the byte: the usage's canonical bytes and
# content hash, each TokenConsumed's bytes, or the same rejection, reason and message.

def _demo_catalogue() -> Catalogue:
    """The demo company's registry: funding splits, images, video, agents and APIs."""
    document = registry_document()
    entities = {kind: [PAYLOAD_MODELS[kind].model_validate(item) for item in document.get(section) or []]
                for section, kind in REGISTRY_SECTIONS.items()}
    return Catalogue(
        business_units=frozenset(unit.bu_id for unit in entities["business_unit"]),
        models={model.model_id: model for model in entities["model"]},
        conversion_tables=tuple(sorted(entities["conversion_table"], key=lambda table: table.effective_from)),
        funding=tuple(entities["funding_agreement"]))


DEMO_CATALOGUE = _demo_catalogue()
DEMO_LIMITS = Limits(now=DAY_END_DEFAULT, accepted_window=timedelta(days=2), future_skew=timedelta(minutes=5),
                     message_bytes_max=65536)
_USAGE_FIELDS = tuple(UsageData.model_fields)


def _outcome(raw: RawUsage, *, compiled: bool) -> tuple:
    """What metering makes of one message, in bytes and values."""
    with contextlib.ExitStack() as stack:
        if not compiled:
            stack.enter_context(mock.patch.object(metering, "_compiled_usage", lambda envelope: None))
        try:
            metered = meter(raw, DEMO_CATALOGUE, DEMO_LIMITS)
        except UsageError as error:
            return ("rejected", error.rejection)
    usage = metered.usage
    values = (usage.source, usage.id, usage.time, usage.time.utcoffset(),
              tuple(getattr(usage.data, name) for name in _USAGE_FIELDS))
    return ("accepted", metered.canonical, metered.content_sha256, tuple(codecs.encode(event) for event in metered.consumed),
            values)


def _same_either_way(raw: RawUsage) -> tuple:
    compiled = _outcome(raw, compiled=True)
    assert compiled == _outcome(raw, compiled=False)
    if compiled[0] == "accepted":
        _, canonical, content_sha256, payloads, _ = compiled
        assert canonical == canonical_json(UsageReported.model_validate(orjson.loads(canonical)))
        assert content_sha256 == sha256_hex(canonical)
        for payload in payloads:  # what the contract's model makes of each TokenConsumed, validated field by field
            assert canonical_json(TokenConsumed.model_validate(orjson.loads(payload))) == payload
    return compiled


def test_golden_and_generated_usage_take_the_compiled_path_and_give_what_the_model_gives() -> None:
    golden = (GOLDEN_DIR / "usage_reported.json").read_bytes().strip()
    assert metering._compiled_usage(orjson.loads(golden)) is not None
    assert _outcome(RawUsage(golden), compiled=True) == _outcome(RawUsage(golden), compiled=False)
    assert meter(RawUsage(golden), CATALOGUE, LIMITS).canonical == golden
    splits = 0
    for usage in generate_usage(400, day_end=DAY_END_DEFAULT):
        value = canonical_json(usage)
        assert metering._compiled_usage(orjson.loads(value)) is not None, value
        outcome = _same_either_way(RawUsage(value))
        assert outcome[0] == "accepted" and outcome[1] == value
        splits += len(outcome[3]) > 1
    assert splits > 0, "funding splits are among the generated usage"


_TIME_FORMS = ("iso", "z", "seconds", "milliseconds", "lower", "space", "no_zone", "nanoseconds", "epoch", "date_only")


def _time_text(moment: datetime, form: str) -> object:
    if form == "iso":
        return moment.isoformat()
    if form == "z":
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if form in ("seconds", "milliseconds"):
        return moment.isoformat(timespec=form)
    if form == "lower":
        return moment.isoformat().replace("T", "t")
    if form == "space":
        return moment.isoformat(sep=" ")
    if form == "no_zone":
        return moment.replace(tzinfo=None).isoformat()
    if form == "nanoseconds":
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "789+05:30"
    if form == "epoch":
        return int(moment.timestamp())
    return moment.date().isoformat()


_near_now = st.datetimes(min_value=DAY_END_DEFAULT.replace(tzinfo=None) - timedelta(days=2, hours=1),
                         max_value=DAY_END_DEFAULT.replace(tzinfo=None) + timedelta(minutes=10),
                         timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))]))
_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12) | st.sampled_from(
    ["", "x" * 129, "x" * 257, "x" * 513])
_odd = st.sampled_from([None, True, False, 1.5, 10.0, "12", -1, QUANTITY_MAX, QUANTITY_MAX + 1, [], {}])
_counts = st.integers(0, 200_000) | st.integers(-10, QUANTITY_MAX + 10) | _odd
_decimals = st.sampled_from(["5", "10", "2.5", " 5 ", "1e2", "1E-7", "0.0000001", "-1", "0", "-0", "NaN", "Infinity",
                             "abc", "1_0", "", 5, 10, 0, 2.5, True, None]) | st.decimals(
    min_value=Decimal("0"), max_value=Decimal("1e6"), allow_nan=False, places=3).map(str)
_data_fields = {
    "consumer_bu": st.sampled_from(sorted(DEMO_CATALOGUE.business_units)) | st.sampled_from(
        ["no-such-bu", "Not-A-Slug", "", "a" * 65, 7, None]),
    "model": st.sampled_from(sorted(DEMO_CATALOGUE.models)) | st.sampled_from(["no-such-model", "", None, 3]),
    "app": st.none() | st.sampled_from(["search", "lab", "scan"]) | _texts | _odd,
    "product": st.none() | _texts,
    "input_tokens": _counts, "cache_read_tokens": _counts, "cache_write_tokens": _counts, "output_tokens": _counts,
    "reasoning_tokens": _counts, "embedding_tokens": _counts, "image_count": _counts,
    "image_size": st.sampled_from(["1024x1024", "2048x2048", "64x64", "", None, 1024]),
    "video_seconds": _decimals, "video_resolution": st.sampled_from(["720p", "1080p", "4k", "", None]),
    "audio_seconds": _decimals, "agent_steps": _counts, "tool_calls": _counts, "api_calls": _counts,
    "mystery_tokens": _counts,
}
_attributes = {
    "specversion": st.just("1.0") | st.sampled_from(["1.1", 1, None]),
    "id": st.from_regex(r"req-[0-9]{1,6}", fullmatch=True) | _texts | _odd,
    "source": st.sampled_from(["gateway/taobao", "gateway/quark"]) | _texts | _odd,
    "type": st.just("com.tokenhub.usage.v1") | st.sampled_from(["com.tokenhub.usage.v2", None]),
    "subject": st.none() | _texts | _odd,
    "datacontenttype": st.none() | st.sampled_from(["application/json", "text/plain", 1]),
    "traceparent": st.sampled_from(["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", 5, None]),
}


@st.composite
def usage_messages(draw: st.DrawFn) -> RawUsage:
    """Usage as producers send it, valid or not: the fields of a real event, each
    sometimes left out, out of range, of another JSON type or in another form."""
    model = draw(st.sampled_from(sorted(DEMO_CATALOGUE.models)))
    data: dict[str, object] = {"consumer_bu": draw(st.sampled_from(sorted(DEMO_CATALOGUE.business_units))),
                               "model": model, "input_tokens": draw(st.integers(1, 100_000))}
    for name in draw(st.lists(st.sampled_from(sorted(_data_fields)), max_size=4, unique=True)):
        data[name] = draw(_data_fields[name])
    if draw(st.sampled_from(range(10))) == 9:  # now and then, not by the generator's bias to its bounds
        del data[draw(st.sampled_from(["consumer_bu", "model", "input_tokens"]))]
    moment = draw(_near_now)
    envelope: dict[str, object] = {"specversion": "1.0", "id": draw(st.from_regex(r"req-[0-9]{1,6}", fullmatch=True)),
                                   "source": "gateway/taobao", "type": "com.tokenhub.usage.v1",
                                   "time": _time_text(moment, draw(st.sampled_from(_TIME_FORMS))), "data": data}
    for name in draw(st.lists(st.sampled_from(sorted(_attributes)), max_size=2, unique=True)):
        envelope[name] = draw(_attributes[name])
    if draw(st.sampled_from(range(10))) == 9:  # now and then, not by the generator's bias to its bounds
        del envelope[draw(st.sampled_from(["id", "source", "time", "data", "specversion"]))]
    if draw(st.booleans()) and all(isinstance(value, str) for name, value in envelope.items() if name != "data"):
        body = envelope.pop("data", None)  # binary mode: attributes as ce_ headers
        return RawUsage(orjson.dumps(body), tuple((f"ce_{name}", value.encode()) for name, value in envelope.items()))
    return RawUsage(orjson.dumps(envelope))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(usage_messages())
def test_generated_usage_gives_the_same_bytes_or_the_same_reason_either_way(raw: RawUsage) -> None:
    _same_either_way(raw)


def test_the_compiled_path_reads_a_time_only_as_the_model_reads_it() -> None:
    """Every offset the pattern lets through, and the calendar's edges: what the
    compiled path reads, the model reads to the same instant; the rest is the model's."""
    base = orjson.loads((GOLDEN_DIR / "usage_reported.json").read_bytes())
    offsets = [f"{sign}{hours:02d}:{minutes:02d}" for sign in "+-" for hours in range(100) for minutes in range(100)]
    dates = [f"{year}-{month:02d}-{day:02d}" for year in ("2024", "2026", "0001", "9999")
             for month in range(14) for day in range(33)]
    clocks = [f"{hours:02d}:{minutes:02d}:{seconds:02d}" for hours in (0, 23, 24, 99) for minutes in (0, 59, 60)
              for seconds in (0, 59, 60, 61)]
    texts = ([f"2026-03-14T10:30:15{offset}" for offset in offsets] + [f"{date}T10:30:15Z" for date in dates]
             + [f"2026-03-14T{clock}.5+08:00" for clock in clocks] + [f"0001-01-01T00:00:00{offset}" for offset in offsets[::7]]
             + [f"9999-12-31T23:59:59.999999{offset}" for offset in offsets[::7]])
    compiled = 0
    for text in texts:
        envelope = {**base, "time": text}
        try:
            usage = metering._compiled_usage(envelope)
        except OverflowError:  # pragma: no cover - the compiled path hands these to the model
            raise
        if usage is None:
            continue
        compiled += 1
        validated = UsageReported.model_validate(envelope)
        assert (usage.time, usage.time.tzinfo) == (validated.time, validated.time.tzinfo), text
        assert codecs.encode(usage) == canonical_json(validated), text
    assert compiled > 2000
