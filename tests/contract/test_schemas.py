"""The wire format is a contract: checked-in schemas match the models, golden
canonical bytes round-trip exactly, and old payloads still parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import orjson
import pytest
from pydantic import ValidationError

from tokenhub.contracts import schema_export
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import LedgerPosted, Priced, UsageData, UsageReported, decode
from tokenhub.contracts.settlement import SettlementNetted
from tests.contract.examples import EXAMPLES, GOLDEN_DIR, PRICED, SETTLEMENT

REGENERATE = "run `make schemas` (python -m tokenhub.contracts.schema_export) and commit the result"


@pytest.mark.parametrize("name", sorted(schema_export.documents()))
def test_checked_in_schema_matches_the_models(name: str) -> None:
    checked_in = schema_export.SCHEMAS_DIR / name
    assert checked_in.exists(), f"{name} is not checked in: {REGENERATE}"
    assert checked_in.read_text() == schema_export.documents()[name], f"{name} drifted from the models: {REGENERATE}"


def test_no_stale_schema_files() -> None:
    assert {path.name for path in schema_export.SCHEMAS_DIR.glob("*.json")} == set(schema_export.documents())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_golden_bytes_are_what_the_code_produces(name: str) -> None:
    golden = (GOLDEN_DIR / f"{name}.json").read_bytes().rstrip(b"\n")
    assert canonical_json(EXAMPLES[name]) == golden, f"the wire form of {name} changed"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_golden_parses_and_reencodes_byte_for_byte(name: str) -> None:
    golden = (GOLDEN_DIR / f"{name}.json").read_bytes().rstrip(b"\n")
    model = type(EXAMPLES[name])
    parsed = decode(model, golden)
    assert canonical_json(parsed) == golden
    assert parsed == EXAMPLES[name]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_validate_against_their_exported_schema(name: str) -> None:
    model = type(EXAMPLES[name])
    schema = json.loads((schema_export.SCHEMAS_DIR / schema_export.schema_name(model)).read_text())
    jsonschema.validate(orjson.loads(canonical_json(EXAMPLES[name])), schema)


def test_a_newer_minor_version_with_unknown_fields_still_parses() -> None:
    payload = orjson.loads((GOLDEN_DIR / "priced.json").read_bytes())
    payload["added_in_1_1"] = "ignored"
    payload["lines"][0]["discount_code"] = "ignored too"
    assert decode(Priced, orjson.dumps(payload)) == PRICED
    posted = orjson.loads((GOLDEN_DIR / "ledger_posted.json").read_bytes())
    posted["postings"][0]["memo"] = "new optional field"
    assert decode(LedgerPosted, orjson.dumps(posted)).postings == EXAMPLES["ledger_posted"].postings


def test_events_we_build_forbid_unknown_fields() -> None:
    payload = orjson.loads((GOLDEN_DIR / "priced.json").read_bytes())
    payload["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        Priced.model_validate(payload)


def test_usage_data_rejects_an_unknown_quantity() -> None:
    payload = orjson.loads((GOLDEN_DIR / "usage_reported.json").read_bytes())
    payload["data"]["thinking_tokens"] = 12
    with pytest.raises(ValidationError, match="thinking_tokens"):
        UsageReported.model_validate(payload)
    with pytest.raises(ValidationError):
        UsageData.model_validate({"consumer_bu": "quark", "model": "qwen-max", "input_tokens": 1, "x": 2})


def test_cloudevents_extension_attributes_are_kept() -> None:
    payload = orjson.loads((GOLDEN_DIR / "usage_reported.json").read_bytes())
    payload["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event = UsageReported.model_validate(payload)
    assert orjson.loads(canonical_json(event))["traceparent"] == payload["traceparent"]


def test_events_are_frozen() -> None:
    with pytest.raises(ValidationError):
        PRICED.total_amount = PRICED.total_amount + 1  # type: ignore[misc]


def test_golden_amounts_are_plain_decimal_strings_at_twelve_places() -> None:
    priced = orjson.loads((GOLDEN_DIR / "priced.json").read_bytes())
    amounts = [priced["total_amount"]] + [value for line in priced["lines"]
                                          for value in (line["amount"], line["unit_price_per_million"])]
    assert all(re.fullmatch(r"-?\d+\.\d{12}", amount) for amount in amounts), amounts
    assert priced["total_amount"] == "0.684676800000"


def test_golden_directory_has_only_known_examples() -> None:
    assert {path.stem for path in Path(GOLDEN_DIR).glob("*.json")} >= set(EXAMPLES)


def test_a_settlement_published_before_revisions_existed_reads_as_revision_one() -> None:
    """The settlement's wire form gained `revision` and `invoices`; one published before still parses."""
    before = (b'{"cause_id":"settlement:2026-03","currency":"CNY","event_time":"2026-03-31T16:00:00Z",'
              b'"id":"aca587f7-4a80-54ed-8c0b-78b5845a39d4","matrix":[{"amount":"0.684676800000",'
              b'"payer_bu":"taobao-tmall","provider_bu":"qwen-platform"}],"period":"2026-03","positions":'
              b'{"qwen-platform":"0.684676800000","taobao-tmall":"-0.684676800000"},"rounded_positions":'
              b'{"qwen-platform":"0.680000000000","taobao-tmall":"-0.680000000000"},"schema_version":1,"transfers":'
              b'[{"amount":"0.680000000000","from_bu":"taobao-tmall","to_bu":"qwen-platform"}],"type":"settlement.netted"}')
    settlement = decode(SettlementNetted, before)
    assert (settlement.revision, settlement.invoices) == (1, ())
    assert settlement.model_copy(update={"invoices": SETTLEMENT.invoices}) == SETTLEMENT
