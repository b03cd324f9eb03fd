"""Pricing on the real stack, driven through the `tokenhub` command handlers:
consumption parked until a book prices it, a retroactive correction that moves
balances by exactly the difference (and again for a later version, and not at
all for the same one), and an imported LiteLLM price map pricing usage,
context ranges, per-image and per-second prices included."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from tokenhub.services.ledger.queries import balances
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import Priced, decode
from tokenhub.contracts.ids import priced_id
from tokenhub.contracts.money import line_amount
from tokenhub.contracts.pricebook import book_from_document
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED
from tokenhub.contracts.stored import unpack
from tokenhub.infra.pipeline import wait_until
from tokenhub.infra.settings import clock
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.common.outbox import relay
from tokenhub.services.pricing import handlers
from tests.integration.support import World, delta, emit, publish_events, read_counters, wait_settled

pytestmark = pytest.mark.asyncio(loop_scope="session")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_prices.json"
D = Decimal
WAIT_S = 60.0
CLI_TIMEOUT_S = 120


@pytest.fixture
def cli_env(backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The command handlers find the test stack the way a person's shell would: environment variables."""
    monkeypatch.setenv("TOKENHUB_BOOTSTRAP_SERVERS", backend.settings.bootstrap_servers or "")
    monkeypatch.setenv("TOKENHUB_DATABASE_URL", backend.settings.database_url or "")
    monkeypatch.setenv("TOKENHUB_STATE_DIR", str(tmp_path / "no-stack"))
    return tmp_path


def _json_output(captured: str) -> Any:
    """The command's JSON document (a command may say more before it)."""
    lines = captured.splitlines()
    start = next(index for index, line in enumerate(lines) if line in ("{", "[", "[]"))
    return json.loads("\n".join(lines[start:]))


class CommandFailed(Exception):
    """A command's non-zero exit; the message is the line it printed on stderr,
    `said` that line without the command's name (`tokenhub invoice close: `)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.said = line.split(": ", 1)[1] if line.startswith("tokenhub ") and ": " in line else line


async def tokenhub(*arguments: str) -> str:
    """`tokenhub ...` as a person runs it in the environment `cli_env` set; what it
    printed. In a thread, so that this test's event loop keeps running meanwhile."""
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tokenhub.cli.main", *arguments],
                                     capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    if result.returncode != 0:
        raise CommandFailed(result.stderr.strip())
    return result.stdout


async def _query(world: World, query: str, *parameters: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        return await connection.fetch(query, *parameters)
    finally:
        await connection.close()


async def _publish(world: World, directory: Path, book_id: str, version: int, effective: datetime,
                   models: list[dict[str, Any]]) -> None:
    path = directory / f"{book_id}-v{version}.json"
    path.write_text(json.dumps({"book_id": book_id, "version": version, "currency": "CNY",
                                "effective_from": effective.isoformat(), "models": models}))
    await tokenhub("pricebook", "publish", str(path), "--retroactive", "--actor", "tests", "--reason", "test book")
    await _wait_book(world, book_id, version)


async def _wait_book(world: World, book_id: str, version: int) -> None:
    async def stored() -> bool:
        rows = await _query(world, "select count(*) as n from pricing.price_books where book_id = $1 and version = $2",
                            book_id, version)
        return rows[0]["n"] == 1
    await wait_until(stored, WAIT_S, f"book {book_id} v{version}")


async def _publish_book(world: World, book_id: str, version: int, effective: datetime, models: list[dict[str, Any]],
                        **extra: Any) -> None:
    """A book straight onto the topic, skipping the CLI's checks (the invoicing tests use it too)."""
    document = {"book_id": book_id, "version": version, "currency": "CNY", "effective_from": effective.isoformat(),
                "models": models, **extra}
    book = book_from_document(document, actor="tests", reason="test book", retroactive=True,
                              published_at=clock(world.settings))
    await publish_events(world.settings, PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))])
    await _wait_book(world, book_id, version)


async def _reprice(world: World, start: datetime, end: datetime) -> handlers.RepriceReport:
    """Pricing's own reprice on its own schema, relayed, for the world's model (the invoicing tests use it too)."""
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    producer = create_producer(world.settings.bootstrap_servers or "", client_id="tests-reprice")
    await producer.start()
    try:
        report = await handlers.reprice(pool, start, end, world.model)
        await relay(pool, producer, handlers.SCHEMA)
        return report
    finally:
        await producer.stop()
        await pool.close()


async def _balance(world: World, name: str) -> tuple[Decimal, Decimal, int]:
    """(spend, revenue, tokens consumed) from the ledger's projection."""
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        rows = {row.bu: row for row in await balances(pool)}
    finally:
        await pool.close()
    payer, provider = rows.get(world.bu(name)), rows.get(world.provider)
    return (payer.spend if payer else D(0), provider.revenue if provider else D(0),
            payer.tokens_consumed if payer else 0)


async def _priced(world: World, bu: str) -> list[Priced]:
    rows = await _query(world, "select priced as payload from ledger.journal where chain = $1", world.bu(bu))
    return [decode(Priced, unpack(row["payload"])) for row in rows]


async def test_consumption_without_a_price_is_parked_listed_then_priced_when_a_book_arrives(
        backend, cli_env: Path) -> None:
    world = World(backend.settings)
    model = f"{world.prefix}-new"
    await world.publish(["shop"], extra_models=[{"model_id": model, "provider_bu": world.provider,
                                                 "modality": "text", "token_classes": ["input", "output"]}])
    sizes = [(10_000 + index, 1_000 + 7 * index) for index in range(12)]
    events = [world.usage("shop", index, *size, model=model) for index, size in enumerate(sizes)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)

    async def all_parked() -> bool:
        return delta(await read_counters(world.settings), before, "pricing.parked") >= 12
    await wait_until(all_parked, WAIT_S, "the consumption to be parked")
    after_parking = await read_counters(world.settings)
    assert (delta(after_parking, before, "pricing.parked"), delta(after_parking, before, "pricing.priced")) == (12, 0)
    assert await _balance(world, "shop") == (D(0), D(0), 0)

    listed = [row for row in _json_output(await tokenhub("pricing", "parked", "--limit", "100000", "--json"))
              if row["model"] == model]
    assert len(listed) == 12
    assert {row["payer_bu"] for row in listed} == {world.bu("shop")}
    assert all(row["reason"].startswith(f"no price book prices {model} at ") for row in listed)

    await _publish(world, cli_env, f"{world.prefix}-late", 1, datetime.now(UTC) - timedelta(days=1),
                   [{"model": model, "unit_prices_per_million": {"input": "3", "output": "12"}}])
    after = await wait_settled(world.settings, before, 12)
    assert (delta(after, before, "pricing.unparked"), delta(after, before, "pricing.priced")) == (12, 12)
    expected = sum((line_amount(i, D(3)) + line_amount(o, D(12)) for i, o in sizes), D(0))
    assert expected == D("0.509742000000")  # (120066 x 3 + 12462 x 12) / 1e6
    assert await _balance(world, "shop") == (expected, expected, sum(i + o for i, o in sizes))
    rows = await _query(world, "select count(*) as n from pricing.parked where model = $1", model)
    assert rows[0]["n"] == 0
    refusal = f"version 1 of book {world.prefix}-late is already published and never changes; publish version 2"
    with pytest.raises(CommandFailed, match=refusal):
        await _publish(world, cli_env, f"{world.prefix}-late", 1, datetime.now(UTC) - timedelta(days=1),
                       [{"model": model, "unit_prices_per_million": {"input": "0", "output": "0"}}])
    assert {(event.book_id, event.book_version, event.kind) for event in await _priced(world, "shop")} == {
        (f"{world.prefix}-late", 1, "charge")}


async def _reprice_command(start: datetime, end: datetime, model: str) -> dict[str, Any]:
    return _json_output(await tokenhub("reprice", "--from", start.isoformat(), "--to", end.isoformat(), "--model", model,
                                       "--json"))


async def test_a_retroactive_correction_moves_balances_by_exactly_the_difference(
        backend, cli_env: Path) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    sizes = [(10_000 + index * 37, 1_000 + index) for index in range(30)]
    events = [world.usage("shop", index, *size) for index, size in enumerate(sizes)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, len(events))
    tokens = sum(i + o for i, o in sizes)
    original = sum((world.expected_amount(*size) for size in sizes), D(0))
    assert await _balance(world, "shop") == (original, original, tokens)
    charges = {event.consumed_id: event for event in await _priced(world, "shop")}
    assert len(charges) == 30

    window = (datetime.now(UTC) - timedelta(days=1), datetime.now(UTC))
    effective = datetime.now(UTC) - timedelta(days=10)

    async def corrected(version: int, input_price: str, output_price: str) -> Decimal:
        await _publish(world, cli_env, f"{world.prefix}-book", version, effective + timedelta(hours=version),
                       [{"model": world.model, "unit_prices_per_million": {"input": input_price, "output": output_price}}])
        spend_before, _, _ = await _balance(world, "shop")
        posted_before = await read_counters(world.settings)
        target = sum((line_amount(i, D(input_price)) + line_amount(o, D(output_price)) for i, o in sizes), D(0))
        report = await _reprice_command(*window, world.model)
        assert report == {"examined": 30, "corrected": 30, "events": 60, "unpriceable": 0,
                          "difference": f"{target - spend_before:.12f}"}

        async def posted() -> bool:
            return delta(await read_counters(world.settings), posted_before, "ledger.posted") >= 60
        await wait_until(posted, WAIT_S, f"version {version}'s reversals and corrections to be posted")
        assert delta(await read_counters(world.settings), posted_before, "ledger.posted") == 60
        # The balance moved by exactly the difference; the Tokens netted out to the usage.
        assert await _balance(world, "shop") == (target, target, tokens)
        return target

    v2 = await corrected(2, "2.0", "8.0")
    assert v2 - original == -sum((D(i) * D("0.4") + D(o) * D("1.6")) / 10**6 for i, o in sizes)
    events_v2 = await _priced(world, "shop")
    reversals = [event for event in events_v2 if event.kind == "reversal"]
    corrections = {event.consumed_id: event for event in events_v2 if event.kind == "correction"}
    assert (len(reversals), len(corrections)) == (30, 30)
    for reversal in reversals:
        charge = charges[reversal.consumed_id]
        assert reversal.corrects_id == charge.id
        assert reversal.id == priced_id(charge.consumed_id, f"{world.prefix}-book", 2, kind="reversal")
        assert [(line.tokens, line.amount) for line in reversal.lines] == [(-line.tokens, -line.amount) for line in charge.lines]
        assert all(line.tokens < 0 and line.amount < 0 for line in reversal.lines)
        correction = corrections[reversal.consumed_id]
        assert (correction.corrects_id, correction.book_version) == (charge.id, 2)
        assert correction.id == priced_id(charge.consumed_id, f"{world.prefix}-book", 2, kind="correction")

    counted = await read_counters(world.settings)
    assert await _reprice_command(*window, world.model) == {  # the same version again: no further effect
        "examined": 30, "corrected": 0, "events": 0, "unpriceable": 0, "difference": "0"}
    assert delta(await read_counters(world.settings), counted, "pricing.reversed") == 0

    v3 = await corrected(3, "1.0", "4.0")  # a later version corrects the corrections
    assert v3 * 2 == v2
    entries = await _query(world, "select priced, case when money_debit like '%:spend' then amount else -amount end as amount "
                           "from ledger.journal where chain = $1", world.bu("shop"))
    kinds = Counter(decode(Priced, unpack(row["priced"])).kind for row in entries)
    assert sorted(kinds.items()) == [("charge", 30), ("correction", 60), ("reversal", 60)]
    assert sum(row["amount"] for row in entries) == v3


async def _registered_models(world: World, models: dict[str, tuple[str, list[str]]]) -> list[dict[str, Any]]:
    return [{"model_id": f"{world.prefix}-{name}", "provider_bu": world.provider, "modality": modality,
             "token_classes": classes} for name, (modality, classes) in models.items()]


async def test_an_imported_litellm_map_prices_usage_with_its_context_ranges_and_units(
        backend, cli_env: Path) -> None:
    world = World(backend.settings)
    names = {"qwen-max-intl": ("text", ["input", "cache_read", "output", "reasoning"]),
             "qwen-plus-intl": ("text", ["input", "output", "reasoning"]),
             "wan-image-intl": ("image", ["image"]),
             "wan-video-intl": ("video", ["video"])}
    # Conversion tables are global and chosen by time: this one is in force, alone, in a slot of its own.
    slot = datetime.now(UTC) - timedelta(days=20)
    table = {"version": 70_000 + int(world.prefix[1:5], 16), "effective_from": slot.isoformat(), "rules": [
        {"unit": "image:*", "token_class": "image", "tokens_per_unit": "1000"},
        {"unit": "video_second:*", "token_class": "video", "tokens_per_unit": "4000"}]}
    await world.publish(["shop"], extra_models=await _registered_models(world, names), conversion_tables=[table])

    async def table_stored() -> bool:
        rows = await _query(world, "select count(*) as n from metering.conversion_tables where version = $1", table["version"])
        return rows[0]["n"] == 1
    await wait_until(table_stored, WAIT_S, "the conversion table")
    text = FIXTURE.read_text()
    for name in names:
        text = text.replace(f'"{name}"', f'"{world.prefix}-{name}"')
    price_map = cli_env / "prices.json"
    price_map.write_text(text)
    book_id = f"{world.prefix}-litellm"
    await tokenhub("pricebook", "import-litellm", str(price_map), "--models", ",".join(f"{world.prefix}-{name}" for name in names),
                   "--rate", "7.2", "--source-currency", "USD", "--book-id", book_id, "--version", "1",
                   "--effective-from", (slot + timedelta(hours=1)).isoformat(), "--publish", "--retroactive",
                   "--actor", "tests", "--reason", "list prices")
    await _wait_book(world, book_id, 1)

    shown = _json_output(await tokenhub("pricebook", "show", f"{world.prefix}-wan-video-intl",
                                        "--as-of", (slot + timedelta(days=1)).isoformat(), "--json"))[0]
    assert (shown["book_id"], shown["unit_prices_per_million"]) == (book_id, {"video": "180.000000000000"})
    assert f"conversion table v{table['version']}" in shown["note"]
    rows = await _query(world, "select convert_from(payload, 'UTF8')::jsonb as book from pricing.price_books "
                        "where book_id = $1", book_id)
    stored = json.loads(rows[0]["book"])
    assert (stored["exchange_rate"], stored["source_currency"], stored["currency"]) == ("7.2", "USD", "CNY")

    at = slot + timedelta(days=1)

    def usage(index: int, name: str, **quantities: Any):  # noqa: ANN202
        return world.usage("shop", index, quantities.pop("input_tokens", None), quantities.pop("output_tokens", None),
                           model=f"{world.prefix}-{name}", time=at, **quantities)
    events = [
        usage(1, "qwen-max-intl", input_tokens=100_000, output_tokens=2_000),
        usage(2, "qwen-max-intl", input_tokens=118_000, cache_read_tokens=10_000, output_tokens=2_000),  # 128,000
        usage(3, "qwen-max-intl", input_tokens=118_001, cache_read_tokens=10_000, output_tokens=2_000),  # 128,001
        usage(4, "qwen-plus-intl", input_tokens=256_000, output_tokens=1_000, reasoning_tokens=500),
        usage(5, "qwen-plus-intl", input_tokens=256_001, output_tokens=1_000, reasoning_tokens=500),
        usage(6, "wan-image-intl", image_count=3, image_size="1024x1024"),
        usage(7, "wan-video-intl", video_seconds="10", video_resolution="720p"),
    ]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, len(events))
    priced = {event.cause_id: event for event in await _priced(world, "shop")}
    consumed = [orjson.loads(unpack(row["payload"])) for row in await _query(
        world, "select payload from metering.consumed where usage_source = $1", f"tests/{world.prefix}")]
    usage_of = {item["id"]: item["usage_id"] for item in consumed}
    by_request = {usage_of[str(event.consumed_id)]: event for event in priced.values()}
    expected = {  # by hand, USD list x 7.2, per million Tokens
        "req-1": (None, D("1.152") + D("0.09216")),                                  # 100k x 11.52 + 2k x 46.08
        "req-2": (None, D("1.35936") + D("0.02304") + D("0.09216")),                 # 118k x 11.52 + 10k x 2.304 + 2k x 46.08
        "req-3": ("above-128k", D("2.71874304") + D("0.02304") + D("0.18432")),      # 118001 x 23.04 + 10k x 2.304 + 2k x 92.16
        "req-4": (None, D("0.73728") + D("0.00864") + D("0.0144")),                  # 256k x 2.88 + 1k x 8.64 + 500 x 28.8
        "req-5": ("above-256k", D("2.21184864") + D("0.02592") + D("0.01296")),      # 256001 x 8.64 + 1k x 25.92 + 500 x 25.92
        "req-6": (None, D("0.432")),                                                 # 3 images x 0.02 USD x 7.2
        "req-7": (None, D("7.2")),                                                   # 10 s x 0.1 USD x 7.2
    }
    assert {request: (event.context_tier, event.total_amount) for request, event in by_request.items()} == expected
    assert {event.book_id for event in by_request.values()} == {book_id}
    spend, revenue, _ = await _balance(world, "shop")
    assert spend == revenue == sum((amount for _, amount in expected.values()), D(0))
