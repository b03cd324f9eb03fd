"""Every --json output, as a person's tool gets it from the session's stack,
matches its checked-in JSON Schema (views/schemas/): amounts and Tokens as
strings, times in one RFC 3339 form, each command's shape as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.support import World, emit, read_counters, wait_settled
from tokenhub.views import outputs
from tokenhub.contracts.periods import containing

pytestmark = pytest.mark.asyncio(loop_scope="session")
STATE_DIR = Path(tempfile.mkdtemp(prefix="tokenhub-e2e-"))
WAIT_S = 60


def _run(backend, *arguments: str, code: int = 0) -> Any:  # noqa: ANN001
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    environment.update({"TOKENHUB_BOOTSTRAP_SERVERS": backend.endpoints.bootstrap_servers,
                        "TOKENHUB_DATABASE_URL": backend.endpoints.database_url, "TOKENHUB_STATE_DIR": str(STATE_DIR)})
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments, "--json"], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code, f"tokenhub {' '.join(arguments)}: {result.stderr}"
    return json.loads(result.stdout)


def _valid(command: str, document: Any) -> Any:
    schema = json.loads((outputs.SCHEMAS_DIR / outputs.file_name(command)).read_text())
    jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())
    return document


async def test_every_reading_command_prints_the_shape_its_schema_names(backend) -> None:  # noqa: ANN001
    world = World(backend.settings)
    conversion = [{"version": 900 + int(time.time()) % 1000, "effective_from": "2026-01-01T00:00:00+08:00",
                   "rules": [{"unit": "agent_step", "token_class": "agent_step", "tokens_per_unit": "500"}]}]
    await world.publish(["shop", "maps"], funding=[{
        "agreement_id": world.bu("split"), "consumer_bu": world.bu("maps"),
        "payers": [{"bu": world.bu("maps"), "percent": "50"}, {"bu": world.bu("shop"), "percent": "50"}],
        "effective_from": "2026-01-01T00:00:00+08:00"}], conversion_tables=conversion)
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", index, 1_000, 100) for index in range(3)]
               + [world.usage("maps", 10, 2_000, 200)])
    await wait_settled(world.settings, before, 4)
    shop, month = world.bu("shop"), containing(datetime.now(UTC), "month", world.settings.timezone).name

    balances = _valid("balance", _run(backend, "balance", "--bu", shop))
    # The shop pays for its own three events and for half of the maps event (the split).
    assert [(row["bu"], row["tokens_consumed"], Decimal(row["spend"])) for row in balances] == [
        (shop, "3300", 4 * world.expected_amount(1_000, 100))]
    for command in ("bu list", "model list", "funding list", "conversion show", "keys list", "rejected list",
                    "pricebook show", "pricing parked", "plan list", "budget show", "apikey list"):
        _valid(command, _run(backend, *command.split()))
    assert any(row["agreement_id"] == world.bu("split") and row["payers"][0]["percent"] == "50"
               for row in _run(backend, "funding", "list"))

    spend = _valid("spend", _run(backend, "spend", "--bu", shop, "--period", month))
    assert Decimal(spend["spend"]) == 3 * world.expected_amount(1_000, 100) + world.expected_amount(1_000, 100)
    assert spend["period_start"].endswith("T16:00:00.000000Z")  # midnight in Asia/Shanghai
    invoices = _valid("invoice list", _run(backend, "invoice", "list", "--bu", shop))
    lines = [line for invoice in invoices for line in invoice["lines"]]
    assert {(line["token_class"], line["price_source"]["book_id"], line["price_source"]["context_tier"])
            for line in lines} == {("input", f"{world.prefix}-book", None), ("output", f"{world.prefix}-book", None)}
    _valid("invoice show", _run(backend, "invoice", "show", "--bu", shop))
    _valid("settle", _run(backend, "settle", "--period", month))

    now = datetime.now(UTC)
    window = ("--from", (now - timedelta(days=1)).isoformat(), "--to", (now + timedelta(minutes=1)).isoformat())
    statement = _valid("statement", _run(backend, "statement", "--bu", shop, *window))
    assert statement["closing"]["tokens_consumed"] == "3300" and statement["entries"][0]["tokens"].isdigit()
    _valid("reprice", _run(backend, "reprice", *window, "--model", f"{world.prefix}-none"))
    _valid("replay", _run(backend, "replay", "--bu", shop))
    _valid("verify", _run(backend, "verify", "--bu", shop))
    _valid("status", _run(backend, "status", code=3))


async def test_emit_reports_what_metering_made_of_each_event(backend, tmp_path: Path) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop"])
    good = world.usage("shop", 1, 1000, 100).model_dump_json()
    unknown = world.usage("shop", 2, 1000, 100).model_dump(mode="json")
    unknown["data"]["consumer_bu"] = world.bu("nobody")
    usage = tmp_path / "usage.jsonl"
    usage.write_text("\n".join([good, json.dumps(unknown), "{not json", good]) + "\n")
    first = _valid("emit", _run(backend, "emit", str(usage)))
    assert {name: first[name] for name in ("sent", "accepted", "duplicates", "rejected", "rejected_by_reason", "unanswered")} == {
        "sent": 4, "accepted": 1, "duplicates": 1, "rejected": 2, "rejected_by_reason": {"not_json": 1, "unknown_bu": 1},
        "unanswered": 0}
    again = _valid("emit", _run(backend, "emit", str(usage)))
    assert (again["accepted"], again["duplicates"], again["rejected_by_reason"]) == (0, 2, {"not_json": 1, "unknown_bu": 1})
    unwaited = _valid("emit", _run(backend, "emit", str(usage), "--wait", "0"))
    assert (unwaited["sent"], unwaited["accepted"]) == (4, None)
