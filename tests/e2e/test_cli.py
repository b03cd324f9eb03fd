"""The CLI as a person runs it, against the session's real stack: registry
changes with actor and reason, bad input rejected with its reason and stored,
resubmitted once corrected, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.integration.support import World, emit, wait_http
from tokenhub.contracts.money import format_amount

STATE_DIR = Path(tempfile.mkdtemp(prefix="tokenhub-e2e-"))  # the commands' log file goes here, not into the checkout
pytestmark = pytest.mark.asyncio(loop_scope="session")
WAIT_S = 60


def _run(backend, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    environment.update({"TOKENHUB_BOOTSTRAP_SERVERS": backend.endpoints.bootstrap_servers,
                        "TOKENHUB_DATABASE_URL": backend.endpoints.database_url, "TOKENHUB_STATE_DIR": str(STATE_DIR)})
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], env=environment,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"tokenhub {' '.join(arguments)}: {result.stderr}")
    return result


def _poll(backend, arguments: tuple[str, ...], accept) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + WAIT_S
    while True:
        rows = json.loads(_run(backend, *arguments).stdout)
        if accept(rows):
            return rows
        assert time.monotonic() < deadline, f"tokenhub {' '.join(arguments)} never showed what was expected: {rows}"
        time.sleep(0.3)


def _one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr


async def test_registry_commands_record_actor_and_reason(backend) -> None:
    slug = f"e2e-{uuid.uuid4().hex[:6]}"
    _run(backend, "bu", "add", slug, "--name", "E2E Unit", "--group", "Tests", "--cost-centre", "CC-9",
         "--actor", "alice", "--reason", "new team")
    rows = _poll(backend, ("bu", "list", "--json"), lambda rows: any(row["bu_id"] == slug for row in rows))
    unit = next(row for row in rows if row["bu_id"] == slug)
    assert (unit["display_name"], unit["cost_centre"], unit["actor"], unit["reason"]) == ("E2E Unit", "CC-9", "alice", "new team")

    bad_shares = _run(backend, "funding", "set", f"{slug}-split", "--consumer", slug, "--payer", f"{slug}=60",
                      "--payer", "cainiao=30", "--reason", "x", check=False)
    _one_line_error(bad_shares, "tokenhub funding set: --payer shares sum to 90 %; give shares that sum to 100 %; "
                                "nothing was published")


async def test_bad_usage_is_rejected_with_its_reason_and_a_corrected_copy_is_accepted(backend, tmp_path: Path) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    good = world.usage("shop", 1, 1000, 100)
    bad = world.usage("shop", 2, 1000, 100).model_dump(mode="json")
    bad["data"]["consumer_bu"] = world.bu("nobody")
    lines = [good.model_dump_json(), json.dumps(bad), "{not json"]
    usage_file = tmp_path / "usage.jsonl"
    usage_file.write_text("\n".join(lines) + "\n")
    emitted = _run(backend, "emit", str(usage_file)).stdout
    assert emitted.strip() == ("sent 3 usage events to usage.reported; metering accepted 1, found 0 duplicates, "
                               "rejected 2 (not_json 1, unknown_bu 1)")

    def ours(page: dict) -> list[dict]:
        return [row for row in page["rejected"] if row["usage_source"] == f"tests/{world.prefix}"]
    rejected = _poll(backend, ("rejected", "list", "--reason", "unknown_bu", "--source", f"tests/{world.prefix}", "--json"),
                     lambda page: len(ours(page)) == 1)
    row = ours(rejected)[0]
    assert row["usage_id"] == "req-2" and world.bu("nobody") in row["message"]
    assert (rejected["total"], rejected["next_after"]) == (1, None)
    not_json = _poll(backend, ("rejected", "list", "--reason", "not_json", "--limit", "1000", "--json"),
                     lambda page: any(item["size"] == len("{not json") for item in page["rejected"]))
    assert not_json["total"] >= 1

    fixed = dict(bad, data=dict(bad["data"], consumer_bu=world.bu("shop")))
    fixed_file = tmp_path / "fixed.json"
    fixed_file.write_text(json.dumps(fixed))
    resubmitted_line = _run(backend, "rejected", "resubmit", row["rejected_id"], "--file", str(fixed_file), "--actor", "bob",
                            "--reason", "BU fixed").stdout
    assert resubmitted_line.strip() == (f"resubmitted {row['rejected_id']} (corrected from {fixed_file}): "
                                        "accepted: metered and on its way to pricing")
    balances = _poll(backend, ("balance", "--bu", world.bu("shop"), "--json"),
                     lambda rows: rows and rows[0]["tokens_consumed"] == "2200")
    assert balances[0]["spend"] == "0.006720000000" == format_amount(2 * world.expected_amount(1000, 100))
    resubmitted = ours(json.loads(_run(backend, "rejected", "list", "--reason", "unknown_bu", "--source",
                                       f"tests/{world.prefix}", "--json").stdout))[0]
    assert resubmitted["resubmitted_by"].startswith("bob")


async def test_api_keys_are_created_listed_and_revoked_and_only_their_hash_is_kept(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    source = f"tests/{world.prefix}"
    created = _run(backend, "keys", "create", "--source", source, "--actor", "carol", "--reason", "gateway onboarding").stdout
    key_id = created.split()[1]
    key = created.splitlines()[1].strip()
    assert key.startswith(f"thk_{key_id}_")
    listed = [row for row in json.loads(_run(backend, "keys", "list", "--json").stdout) if row["key_id"] == key_id]
    assert [(row["sources"], row["actor"], row["reason"], row["revoked_at"]) for row in listed] == [
        ([source], "carol", "gateway onboarding", None)]
    assert key not in json.dumps(listed)

    url = f"http://127.0.0.1:{backend.http_port}/v1/events"
    await wait_http(backend.http_port)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/cloudevents+json"}
    async with httpx.AsyncClient(timeout=30) as client:
        accepted = await client.post(url, content=world.usage("shop", 1, 1000, 100).model_dump_json(), headers=headers)
        _run(backend, "keys", "revoke", key_id)
        refused = await client.post(url, content=world.usage("shop", 2, 1000, 100).model_dump_json(), headers=headers)
    assert (accepted.status_code, accepted.json()["accepted"]) == (202, 1)
    assert refused.status_code == 401
    _one_line_error(_run(backend, "keys", "revoke", key_id, check=False), "no active key")


async def test_price_books_are_validated_before_publishing(backend, tmp_path: Path) -> None:
    book = {"book_id": "e2e", "version": 1, "currency": "CNY",
            "effective_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "models": [{"model": "m", "unit_prices_per_million": {"input": "1"}}]}
    path = tmp_path / "book.json"
    path.write_text(json.dumps(book))
    why = ("--reason", "e2e")
    _one_line_error(_run(backend, "pricebook", "publish", str(path), *why, check=False), "--retroactive")
    path.write_text(json.dumps(dict(book, currency="USD")))
    _one_line_error(_run(backend, "pricebook", "publish", str(path), "--retroactive", *why, check=False), "settlement currency")
    path.write_text(json.dumps(dict(book, models=[{"model": "m", "unit_prices_per_million": {"input": "-1"}}])))
    _one_line_error(_run(backend, "pricebook", "publish", str(path), "--retroactive", *why, check=False), "negative price")
    path.write_text(json.dumps(dict(book, models=[{"model": "m", "unit_prices_per_million": {"input": 0.1}}])))
    _one_line_error(_run(backend, "pricebook", "publish", str(path), "--retroactive", *why, check=False), "float")
    _one_line_error(_run(backend, "pricebook", "publish", str(tmp_path / "missing.yaml"), *why, check=False),
                    f"no such file: {tmp_path / 'missing.yaml'}")


async def test_queries_fail_in_one_line(backend) -> None:
    _one_line_error(_run(backend, "invoice", "show", "--bu", "no-such-bu", check=False), "--bu no-such-bu is not one of: ")
    _one_line_error(_run(backend, "balance", "--as-of", "2026-03-01T00:00:00", check=False),
                    "--as-of 2026-03-01T00:00:00 has no time zone; give one, for example 2026-03-01T00:00:00+08:00")
    _one_line_error(_run(backend, "balance", "--as-of", "2026-12-01", check=False),
                    "--as-of 2026-12-01 is a date, not a time; give a time with its zone, for example 2026-12-01T00:00:00+08:00")
    _one_line_error(_run(backend, "settle", "--period", "2026-W11", check=False),
                    "--period 2026-W11: settlement is monthly; give a month such as 2026-03")
    _one_line_error(_run(backend, "replay", "--bu", "nosuch", check=False), "--bu nosuch is not one of: ")


async def test_pricebook_show_parked_and_litellm_import(backend, tmp_path: Path) -> None:
    world = World(backend.settings)
    unpriced = f"{world.prefix}-unpriced"
    await world.publish(["shop"], extra_models=[{"model_id": unpriced, "provider_bu": world.provider, "modality": "text",
                                                 "token_classes": ["input", "output"]}])
    await emit(backend.settings, [world.usage("shop", 1, 1000, 100, model=unpriced)])
    shown = json.loads(_run(backend, "pricebook", "show", world.model, "--json").stdout)
    assert shown[0]["book_id"] == f"{world.prefix}-book"
    assert shown[0]["unit_prices_per_million"]["input"] == "2.400000000000"
    before = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    _one_line_error(_run(backend, "pricebook", "show", world.model, "--as-of", before, check=False), "no price applies")
    parked = _poll(backend, ("pricing", "parked", "--limit", "100000", "--json"),
                   lambda rows: any(row["model"] == unpriced for row in rows))
    ours = [row for row in parked if row["model"] == unpriced]
    event_time = datetime.fromisoformat(ours[0]["event_time"]).astimezone(UTC)
    assert [(row["payer_bu"], row["reason"]) for row in ours] == [
        (world.bu("shop"), f"no price book prices {unpriced} at {event_time.isoformat()}")]
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_prices.json"
    output = tmp_path / "book.json"
    _run(backend, "pricebook", "import-litellm", str(fixture), "--models", "qwen-max-intl", "--rate", "7.2",
         "--source-currency", "USD", "--output", str(output))
    book = json.loads(output.read_text())
    assert book["models"][0]["unit_prices_per_million"]["input"] == "11.520000000000"
    _one_line_error(_run(backend, "pricebook", "import-litellm", str(fixture), "--source-currency", "USD", check=False),
                    "--rate")
    _one_line_error(_run(backend, "reprice", "--from", "2026-03-02T00:00:00+08:00", "--to", "2026-03-01T00:00:00+08:00",
                         check=False), "tokenhub reprice: --to must be after --from")
