"""Boot and recovery: migrations, topics, and, on a broker that has lost its
topics, the republish of what each service produced (docs/architecture.md,
durability).

The embedded broker keeps its topics in memory: after it restarts every topic is
gone. What each service produced is in its own tables, one row per event, so
`prepare` re-creates the topics and republishes, from those tables, first the
configuration the services keep (registry changes, price books, budgets, as the
full events they arrived as), then each service's output in pipeline order:
metering, pricing, ledger, invoicing, each in the order it produced. Every
consumer recognises what it already handled by event ids and chain sequences,
so the republish changes nothing that was already counted, and whatever a
service stored reaches the next one.

The one exposure left is usage that only the in-memory broker acknowledged:
metering had not stored it, so nobody can republish it (README, durability)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from tokenhub.contracts.topics import SERVICES
from tokenhub.infra.deployment import record_currency
from tokenhub.infra.migrate import migrate
from tokenhub.infra.settings import Settings, load_settings
from tokenhub.infra.topics import create_topics
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer, publish
from tokenhub.services.common.outbox import ProducedRecord
from tokenhub.services.invoicing.adapters import produced as invoicing_produced
from tokenhub.services.ledger.adapters import produced as ledger_produced
from tokenhub.services.metering.adapters import produced as metering_produced
from tokenhub.services.pricing.adapters import produced as pricing_produced

PRODUCERS: Final[dict[str, ModuleType]] = {
    "metering": metering_produced,
    "pricing": pricing_produced,
    "ledger": ledger_produced,
    "invoicing": invoicing_produced,
}
"""Each service's record of what it produced, in pipeline order (the topology's)."""

CHUNK_RECORDS: Final = 10_000
"""Records sent and acknowledged at a time: bounds the producer's buffer and
memory while a journal of millions of entries streams out."""

log = structlog.get_logger()


@dataclass
class BootReport:
    migrations: list[str] = field(default_factory=list)
    topics_created: list[str] = field(default_factory=list)
    republished: dict[str, int] = field(default_factory=dict)
    """Events republished per topic; empty unless the broker had lost its topics."""
    currency: str = ""
    """The deployment's settlement currency, as recorded (infra.deployment)."""

    @property
    def republished_total(self) -> int:
        return sum(self.republished.values())


async def prepare(bootstrap_servers: str, database_url: str, settings: Settings | None = None) -> BootReport:
    """Migrations and topics; on a broker without any of Token Hub's topics (a new
    or restarted embedded broker), republish what every service produced.
    `settings`: the broker's client settings, where they are not this process's."""
    report = BootReport()
    report.migrations = await migrate(database_url)
    report.currency = await record_currency(database_url, settings or load_settings())
    report.topics_created = await create_topics(bootstrap_servers, settings=settings)
    if report.topics_created:
        # Only into the topics just created: on a restarted embedded broker that is
        # every topic; after an upgrade that adds a topic, only the new one.
        report.republished = await republish(bootstrap_servers, database_url, settings,
                                             topics=set(report.topics_created))
    return report


Source = Callable[[asyncpg.Connection], AsyncIterator[ProducedRecord]]


def sources() -> list[tuple[str, Source]]:
    """What is republished, in order: the configuration every service keeps, then
    each service's output, services in pipeline order."""
    if tuple(PRODUCERS) != SERVICES:
        raise RuntimeError(f"the republish knows {tuple(PRODUCERS)}, the topology declares {SERVICES}")
    return ([(f"{service} configuration", module.configuration_records) for service, module in PRODUCERS.items()]
            + [(f"{service} output", module.produced_records) for service, module in PRODUCERS.items()])


async def republish(bootstrap_servers: str, database_url: str, settings: Settings | None = None,
                    topics: set[str] | None = None, only: Sequence[str] | None = None) -> dict[str, int]:
    """Publish again what the services produced (`sources`), each source in its
    order, into `topics` (all by default); returns the events sent per topic.
    `only`: the names of the sources to send (tests)."""
    pool = await create_pool(database_url, size_max=1)
    producer: AIOKafkaProducer = create_producer(bootstrap_servers, client_id="tokenhub-republish", settings=settings)
    await producer.start()
    counts: dict[str, int] = {}
    try:
        async with pool.acquire() as connection:
            for name, source in sources():
                if only is not None and name not in only:
                    continue
                sent = await _send_in_order(producer, source(connection), counts, topics)
                log.info("republished", source=name, events=sent)
    finally:
        await producer.stop()
        await pool.close()
    if counts:
        log.info("republish_done", events=sum(counts.values()), topics=counts)
    return counts


async def _send_in_order(producer: AIOKafkaProducer, records: AsyncIterator[ProducedRecord],
                         counts: dict[str, int], topics: set[str] | None) -> int:
    """Send in chunks of CHUNK_RECORDS, each chunk acknowledged before the next
    is read, so each topic's partitions receive the records in their order.
    Records without headers (all of them today) go in record batches
    (`services.common.kafka.publish`, a fifth of the client's CPU per record
    of one send each); a record with headers is sent on its own."""
    sent = 0
    chunk: list[tuple[str, bytes, bytes]] = []
    async for topic, key, value, headers in records:
        if topics is not None and topic not in topics:
            continue
        counts[topic] = counts.get(topic, 0) + 1
        sent += 1
        if headers:
            await publish(producer, chunk)
            chunk.clear()
            await (await producer.send(topic, value, key=key, headers=list(headers)))
            continue
        chunk.append((topic, key, value))
        if len(chunk) >= CHUNK_RECORDS:
            await publish(producer, chunk)
            chunk.clear()
    await publish(producer, chunk)
    return sent
