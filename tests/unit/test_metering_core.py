"""Metering's pure core: reasons for bad input, conversion, and who pays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.events import QUANTITY_MAX
from tokenhub.contracts.registry import ConversionRule, ConversionTable, FundingAgreement, ModelEntry, PayerShare
from tokenhub.services.metering.domain import (
    Catalogue,
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
from tests.contract.examples import CATALOGUE, LIMITS, USAGE

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
