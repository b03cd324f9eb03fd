"""Pricing on the real stack: consumption parked until a book prices it, a
retroactive correction that moves balances by exactly the difference, and an
imported LiteLLM price map pricing usage, context ranges included."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tokenhub.cli.commands import build_book, publish_events
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.money import line_amount
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.common.outbox import relay
from tokenhub.services.pricing import handlers
from tokenhub.services.pricing.litellm import book_document
from tests.integration.support import World, delta, emit, read_counters, wait_settled

pytestmark = pytest.mark.asyncio(loop_scope="session")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litellm_prices.json"


async def _publish_book(world: World, book_id: str, version: int, effective: datetime, models: list[dict], **extra) -> None:  # noqa: ANN003
    document = {"book_id": book_id, "version": version, "currency": "CNY", "effective_from": effective.isoformat(),
                "models": models, **extra}
    book = build_book(document, world.settings, "tests", "test book", retroactive=True)
    await publish_events(world.settings, PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))])

    async def stored() -> bool:
        rows = await _query(world, "select count(*) as n from pricing.price_books where book_id = $1 and version = $2",
                            book_id, version)
        return rows[0]["n"] == 1
    await wait_until(stored, 30, f"book {book_id} v{version}")


async def _query(world: World, query: str, *parameters):  # noqa: ANN002, ANN202
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        return await connection.fetch(query, *parameters)
    finally:
        await connection.close()


async def _spend(world: World, bu: str) -> Decimal:
    rows = await _query(world, "select coalesce(sum(amount), 0) as spend from ledger.entries where payer_bu = $1", world.bu(bu))
    return rows[0]["spend"]


async def test_consumption_without_a_price_is_parked_then_priced_when_a_book_arrives(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"], extra_models=[{"model_id": f"{world.prefix}-new", "provider_bu": world.provider,
                                                 "modality": "text", "token_classes": ["input", "output"]}])
    events = [world.usage("shop", index, 10_000, 1_000, model=f"{world.prefix}-new") for index in range(12)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)

    async def parked() -> bool:
        rows = await _query(world, "select count(*) as n from pricing.parked where model = $1", f"{world.prefix}-new")
        return rows[0]["n"] == 12
    await wait_until(parked, 60, "the consumption to be parked")
    assert await _spend(world, "shop") == 0

    await _publish_book(world, f"{world.prefix}-late", 1, datetime.now(UTC) - timedelta(days=1),
                        [{"model": f"{world.prefix}-new", "unit_prices_per_million": {"input": "3", "output": "12"}}])
    after = await wait_settled(world.settings, before, 12)
    assert delta(after, before, "pricing.unparked") == 12
    assert await _spend(world, "shop") == 12 * (Decimal("0.03") + Decimal("0.012"))
    rows = await _query(world, "select count(*) as n from pricing.parked where model = $1", f"{world.prefix}-new")
    assert rows[0]["n"] == 0


async def _reprice(world: World, start: datetime, end: datetime) -> tuple[int, int]:
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    producer = create_producer(world.settings.bootstrap_servers or "", client_id="tests-reprice")
    await producer.start()
    try:
        result = await handlers.reprice(pool, start, end, world.model)
        await relay(pool, producer, handlers.SCHEMA)
        return result
    finally:
        await producer.stop()
        await pool.close()


async def test_a_retroactive_correction_moves_balances_by_exactly_the_difference(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    sizes = [(10_000 + index * 37, 1_000 + index) for index in range(30)]
    events = [world.usage("shop", index, *size) for index, size in enumerate(sizes)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, len(events))
    original = await _spend(world, "shop")
    assert original == sum((world.expected_amount(*size) for size in sizes), Decimal(0))

    window = (datetime.now(UTC) - timedelta(days=1), datetime.now(UTC))
    effective = datetime.now(UTC) - timedelta(days=10)
    await _publish_book(world, f"{world.prefix}-book", 2, effective,
                        [{"model": world.model, "unit_prices_per_million": {"input": "2.0", "output": "8.0"}}])
    posted_before = (await read_counters(world.settings)).get("ledger.posted", 0)
    assert await _reprice(world, *window) == (30, 30)

    async def posted() -> bool:
        return (await read_counters(world.settings)).get("ledger.posted", 0) - posted_before >= 60
    await wait_until(posted, 60, "reversals and corrections to be posted")
    corrected = sum((line_amount(i, Decimal("2.0")) + line_amount(o, Decimal("8.0")) for i, o in sizes), Decimal(0))
    assert await _spend(world, "shop") == corrected
    assert corrected - original == -sum((Decimal(i) * Decimal("0.4") + Decimal(o) * Decimal("1.6")) / 10**6
                                         for i, o in sizes)
    kinds = await _query(world, "select kind, count(*) as n, sum(tokens) as tokens from ledger.entries where payer_bu = $1 "
                         "group by kind order by kind", world.bu("shop"))
    assert [(row["kind"], row["n"]) for row in kinds] == [("charge", 30), ("correction", 30), ("reversal", 30)]
    assert sum(row["tokens"] for row in kinds) == sum(i + o for i, o in sizes)  # Tokens net out to the usage
    links = await _query(world, "select count(*) as n from ledger.entries reversal join ledger.entries charge "
                         "on reversal.corrects_id = charge.priced_id where reversal.kind = 'reversal' and reversal.payer_bu = $1",
                         world.bu("shop"))
    assert links[0]["n"] == 30

    assert await _reprice(world, *window) == (30, 0)  # the same version again: no further effect
    await _publish_book(world, f"{world.prefix}-book", 3, effective + timedelta(days=1),
                        [{"model": world.model, "unit_prices_per_million": {"input": "1.0", "output": "4.0"}}])
    posted_before = (await read_counters(world.settings)).get("ledger.posted", 0)
    assert await _reprice(world, *window) == (30, 30)
    await wait_until(posted, 60, "the second correction to be posted")
    assert await _spend(world, "shop") == sum((line_amount(i, Decimal(1)) + line_amount(o, Decimal(4)) for i, o in sizes),
                                              Decimal(0))


async def test_an_imported_litellm_map_prices_usage_with_its_context_ranges(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"], extra_models=[{"model_id": "qwen-max-intl", "provider_bu": world.provider,
                                                 "modality": "text", "token_classes": ["input", "cache_read", "output"]}])
    price_map = json.loads(FIXTURE.read_text(), parse_float=Decimal)
    document = book_document(price_map, ["qwen-max-intl"], book_id=f"{world.prefix}-litellm", version=1,
                             effective_from=datetime.now(UTC) - timedelta(days=1), currency="CNY", rate=Decimal("7.2"),
                             source_currency="USD", table=None)
    document["models"][0]["model"] = "qwen-max-intl"
    await _publish_book(world, document.pop("book_id"), document.pop("version"),
                        datetime.fromisoformat(document.pop("effective_from")), document.pop("models"),
                        **{key: value for key, value in document.items() if key != "currency"})
    small = world.usage("shop", 1, 100_000, 2_000, model="qwen-max-intl")
    large = world.usage("shop", 2, 120_000, 2_000, model="qwen-max-intl", cache_read_tokens=10_000)
    before = await read_counters(world.settings)
    await emit(world.settings, [small, large])
    await wait_settled(world.settings, before, 2)
    rows = await _query(world, "select convert_from(payload, 'UTF8')::jsonb as priced from ledger.priced_archive "
                        "where convert_from(payload, 'UTF8')::jsonb ->> 'payer_bu' = $1", world.bu("shop"))
    priced = {json.loads(row["priced"])["consumed_id"]: json.loads(row["priced"]) for row in rows}
    by_tier = {event["context_tier"] if "context_tier" in event else None: event for event in priced.values()}
    assert by_tier[None]["total_amount"] == f"{Decimal('1.152') + Decimal('0.09216'):.12f}"  # 100k x 11.52 + 2k x 46.08
    assert by_tier["above-128k"]["total_amount"] == f"{Decimal('2.7648') + Decimal('0.02304') + Decimal('0.18432'):.12f}"
