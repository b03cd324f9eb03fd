"""Helpers for integration tests: a unique world per test (business units,
models, a price book), usage to emit, and expected amounts computed by hand."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenhub.client import UsageClient, usage_event
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import UsageReported
from tokenhub.contracts.pricebook import book_from_document
from tokenhub.contracts.registry import registry_changes
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED, REGISTRY_CHANGED
from tokenhub.infra.pipeline import counters, settled, wait_until
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.kafka import send_events, usage_client_options

SETTLE_TIMEOUT_S = 90.0
MILLION = Decimal(1_000_000)


async def publish_events(settings: Settings, topic: str, events: list[tuple[bytes, bytes]]) -> None:
    """Events straight onto a topic, with the settings' Kafka security (the real-cluster tier uses SASL)."""
    await send_events(settings.bootstrap_servers or "", topic, events, settings=settings)


@dataclass
class World:
    """Business units, one provider and one model, unique to a test."""

    settings: Settings
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:8])
    input_price: Decimal = Decimal("2.4")
    output_price: Decimal = Decimal("9.6")

    @property
    def provider(self) -> str:
        return f"{self.prefix}-provider"

    @property
    def model(self) -> str:
        return f"{self.prefix}-qwen-max"

    def bu(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    async def publish(self, consumers: list[str], funding: list[dict[str, Any]] | None = None,
                      extra_models: list[dict[str, Any]] | None = None,
                      conversion_tables: list[dict[str, Any]] | None = None,
                      extra_prices: list[dict[str, Any]] | None = None) -> None:
        now = datetime.now(UTC)
        registry = {
            "business_units": [{"bu_id": self.bu(name), "display_name": name.title()} for name in consumers]
            + [{"bu_id": self.provider, "display_name": "Provider"}],
            "models": [{"model_id": self.model, "provider_bu": self.provider, "modality": "text",
                        "token_classes": ["input", "cache_read", "output", "reasoning"]}] + (extra_models or []),
            "funding_agreements": funding or [],
            "conversion_tables": conversion_tables or [],
        }
        await publish_events(self.settings, REGISTRY_CHANGED.name, [
            (change.entity_id.encode(), canonical_json(change)) for change in registry_changes(registry, "tests", "test world", now)])
        book = book_from_document({
            "book_id": f"{self.prefix}-book", "version": 1, "currency": "CNY",
            "effective_from": (now - timedelta(days=60)).isoformat(),  # before any accepted event time
            "models": [{"model": self.model, "unit_prices_per_million": {
                "input": str(self.input_price), "output": str(self.output_price),
                "cache_read": "0.48", "reasoning": "9.6"}}] + (extra_prices or []),
        }, actor="tests", reason="test prices", retroactive=True, published_at=clock(self.settings))
        await publish_events(self.settings, PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))])
        await self.wait_registered(len(consumers) + 1, 1 + len(extra_models or []), len(funding or []))

    async def wait_registered(self, business_units: int, models: int = 1, agreements: int = 0) -> None:
        connection = await asyncpg.connect(self.settings.database_url)
        try:
            async def ready() -> bool:
                units = await connection.fetchval(
                    "select count(*) from metering.business_units where bu_id like $1", f"{self.prefix}-%")
                known = await connection.fetchval(
                    "select count(*) from metering.models where provider_bu = $1", self.provider)
                funded = await connection.fetchval(
                    "select count(*) from metering.funding_agreements where consumer_bu like $1", f"{self.prefix}-%")
                books = await connection.fetchval("select count(*) from pricing.price_books where book_id = $1",
                                                  f"{self.prefix}-book")
                return units == business_units and known == models and funded == agreements and books == 1
            await wait_until(ready, 30, "the test registry")
        finally:
            await connection.close()

    def usage(self, consumer: str, index: int, input_tokens: int, output_tokens: int, *,
              time: datetime | None = None, **extra: Any) -> UsageReported:
        data = {"consumer_bu": self.bu(consumer), "model": self.model, "input_tokens": input_tokens,
                "output_tokens": output_tokens, **extra}
        return usage_event(f"tests/{self.prefix}", f"req-{index}", time or datetime.now(UTC) - timedelta(hours=1),
                           {name: value for name, value in data.items() if value is not None})

    def expected_amount(self, input_tokens: int, output_tokens: int) -> Decimal:
        """By hand: Tokens times the price per million, per class."""
        return (Decimal(input_tokens) * self.input_price + Decimal(output_tokens) * self.output_price) / MILLION


async def emit(settings: Settings, events: list[UsageReported]) -> None:
    async with UsageClient(settings.bootstrap_servers or "", **usage_client_options(settings)) as client:
        await client.report(events)


async def emit_raw(settings: Settings, values: list[tuple[bytes, bytes]], headers: list[tuple[str, bytes]] | None = None) -> None:
    async with UsageClient(settings.bootstrap_servers or "", **usage_client_options(settings)) as client:
        await client.send_raw(values, headers=headers)


async def read_counters(settings: Settings) -> dict[str, int]:
    connection = await asyncpg.connect(settings.database_url)
    try:
        return await counters(connection)
    finally:
        await connection.close()


async def wait_settled(settings: Settings, before: dict[str, int], sent: int) -> dict[str, int]:
    """Wait until `sent` more usage messages went all the way through."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        latest: dict[str, int] = {}

        async def done() -> bool:
            nonlocal latest
            latest = await counters(connection)
            delta = {name: latest.get(name, 0) - before.get(name, 0) for name in latest}
            return settled(delta, sent)

        await wait_until(done, SETTLE_TIMEOUT_S, f"{sent} usage events to settle")
        return latest
    finally:
        await connection.close()


def delta(after: dict[str, int], before: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


async def wait_http(port: int) -> None:
    """Metering serves HTTP once its consumers run: poll its health until it answers."""
    async with httpx.AsyncClient(timeout=5) as client:
        async def up() -> bool:
            try:
                return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            except httpx.TransportError:
                return False
        await wait_until(up, SETTLE_TIMEOUT_S, f"metering's HTTP port {port}")


async def published_values(bootstrap_servers: str, topic: str, key: bytes, count: int,
                           timeout_s: float = SETTLE_TIMEOUT_S,
                           until: Callable[[list[bytes]], bool] | None = None) -> list[bytes]:
    """The first `count` values published on `topic` under `key`, in offset order
    (or, with `until`, every value read until it holds); fails at its deadline
    saying how many arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while not (until(values) if until else len(values) >= count):
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(values)} of {count} records keyed {key!r} on {topic} by the deadline")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                values += [record.value for record in records if record.key == key]
    finally:
        await consumer.stop()
    return values if until else values[:count]
