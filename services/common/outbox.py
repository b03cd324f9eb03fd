"""Transactional outbox: events are written with the state that caused them,
in one transaction, then published; a crash in between publishes them later.
Every service that publishes derived events uses it, so nothing written is
ever left unpublished and nothing is published that was not written.

A staged batch is one row (its events as parallel arrays), not a row per
event: under load the per-event rows cost an insert, a claim and a delete
each, and the claim walked past every dead row left since the last vacuum."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from tokenhub.infra.settings import Settings
from tokenhub.services.common.kafka import create_producer, publish

RELAY_BATCHES_MAX: Final = 20
"""Staged batches per relay transaction: bounds the time a row lock is held and
the events in memory (each batch holds at most a consumer batch's events, a few
thousand with the budget alerts of a month's turn)."""

log = structlog.get_logger()


@dataclass(frozen=True)
class OutboxRow:
    topic: str
    key: bytes
    value: bytes


ProducedRecord = tuple[str, bytes, bytes, Sequence[tuple[str, bytes]]]
"""(topic, key, value, headers) of an event a service produced, read back from
its own record of it, as `services/<service>/adapters/produced.py` yields them
for the republish into a broker that lost its topics (`infra.boot`)."""


def _insert_sql(schema: str) -> str:
    return f'insert into {schema}.outbox (topics, keys, "values") values ($1::text[], $2::bytea[], $3::bytea[])'


def _claim_sql(schema: str) -> str:
    # Claiming is deleting: one write per batch instead of a row lock and then a
    # delete. The transaction stays open until the broker has every event, so a
    # failed publish rolls the delete back and the batch is relayed again.
    return (
        f"delete from {schema}.outbox where seq in ("
        f"select seq from {schema}.outbox order by seq limit $1 for update skip locked) "
        'returning seq, topics, keys, "values"'
    )


async def stage(connection: asyncpg.Connection, schema: str, rows: list[OutboxRow]) -> None:
    """Add rows, as one staged batch, inside the caller's transaction."""
    if not rows:
        return
    await connection.execute(
        _insert_sql(schema),
        [row.topic for row in rows],
        [row.key for row in rows],
        [row.value for row in rows],
    )


async def relay(pool: asyncpg.Pool, producer: AIOKafkaProducer, schema: str) -> int:
    """Publish every pending event in order and delete its batch once the broker
    has all of it. Batches claimed by another instance are skipped, so instances
    share the work. Returns the number of events published."""
    published = 0
    while True:
        async with pool.acquire() as connection, connection.transaction():
            batches = sorted(await connection.fetch(_claim_sql(schema), RELAY_BATCHES_MAX), key=lambda row: row["seq"])
            if not batches:
                return published
            published += await publish(producer, (
                message for batch in batches
                for message in zip(batch["topics"], batch["keys"], batch["values"], strict=True)))
        if len(batches) < RELAY_BATCHES_MAX:
            return published


async def relay_now(pool: asyncpg.Pool, bootstrap_servers: str, schema: str, *, client_id: str,
                    settings: Settings | None = None) -> int:
    """`relay` on a producer of its own: for a tool that staged events outside a
    service (a period closed on demand), so they go out now rather than with
    the service's next batch. Returns the number of events published."""
    producer = create_producer(bootstrap_servers, client_id=client_id, settings=settings)
    await producer.start()
    try:
        return await relay(pool, producer, schema)
    finally:
        await producer.stop()


async def bump_counters(connection: asyncpg.Connection, schema: str, counts: dict[str, int]) -> None:
    """Durable counters, written in the same transaction as the effects they count."""
    names = [name for name, value in counts.items() if value]
    if not names:
        return
    await connection.execute(
        f"insert into {schema}.counters (name, value) select * from unnest($1::text[], $2::bigint[]) "
        "on conflict (name) do update set value = counters.value + excluded.value",
        names,
        [counts[name] for name in names],
    )
