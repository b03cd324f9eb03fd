"""Every --json output has a checked-in, versioned JSON Schema (views/schemas/),
the schemas are what views/outputs.py says, and the forms `documents.jsonable`
writes are the ones the schemas name."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import jsonschema
import pytest

from tokenhub.views import documents, outputs, text
from tests.unit.test_cli_vocabulary import COMMANDS

REGENERATE = "run `make schemas` (python -m tokenhub.views.outputs) and commit the result"


def test_every_command_that_prints_json_has_a_schema() -> None:
    printing = {" ".join(words) for words, parser in COMMANDS.items()
                if any("--json" in action.option_strings for action in parser._actions)}
    assert printing == set(outputs.OUTPUTS)


@pytest.mark.parametrize("name", sorted(outputs.documents()))
def test_checked_in_schema_matches(name: str) -> None:
    path = outputs.SCHEMAS_DIR / name
    assert path.exists() and path.read_text() == outputs.documents()[name], f"{name} drifted: {REGENERATE}"
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_no_stale_schema_files() -> None:
    assert {path.name for path in outputs.SCHEMAS_DIR.glob("*.json")} == set(outputs.documents())


def test_the_forms_of_amounts_tokens_and_times() -> None:
    moment = datetime(2026, 3, 14, 10, 0, 0, 123000, tzinfo=timezone(timedelta(hours=8)))
    document = json.loads(documents.json({
        "spend": Decimal("0.006720000000"), "tokens_consumed": 2200, "tokens": Decimal("15040.000000000000"),
        "closing": {"tokens_served": "15040.000000000000"}, "at": moment, "as_text": "2026-03-14T10:00:00+08:00",
        "id": uuid.UUID(int=1), "count": 3, "none": None}))
    assert document == {
        "spend": "0.006720000000", "tokens_consumed": "2200", "tokens": "15040", "closing": {"tokens_served": "15040"},
        "at": "2026-03-14T02:00:00.123000Z", "as_text": "2026-03-14T02:00:00.000000Z",
        "id": "00000000-0000-0000-0000-000000000001", "count": 3, "none": None}
    jsonschema.validate(document["at"], outputs.TIME)
    jsonschema.validate(document["tokens"], outputs.TOKENS)
    jsonschema.validate(document["spend"], outputs.AMOUNT)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("2026-03-14T10:00:00+08:00", outputs.TIME)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("1E+3", outputs.AMOUNT)
    assert text.timestamp(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000Z"
