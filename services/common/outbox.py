"""Transactional outbox: events are written with the state that caused them,
in one transaction, then published; a crash in between publishes them later.
Every service that publishes derived events uses it, so nothing written is
ever left unpublished and nothing is published that was not written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

RELAY_BATCH_MAX: Final = 2_000
"""Rows per relay transaction: bounds the time a row lock is held."""

log = structlog.get_logger()


@dataclass(frozen=True)
class OutboxRow:
    topic: str
    key: bytes
    value: bytes


def _insert_sql(schema: str) -> str:
    return (
        f"insert into {schema}.outbox (topic, key, value) "
        "select * from unnest($1::text[], $2::bytea[], $3::bytea[])"
    )


def _claim_sql(schema: str) -> str:
    # Claiming is deleting: one write per row instead of a row lock and then a
    # delete. The transaction stays open until the broker has every row, so a
    # failed publish rolls the delete back and the rows are relayed again.
    return (
        f"delete from {schema}.outbox where seq in ("
        f"select seq from {schema}.outbox order by seq limit $1 for update skip locked) "
        "returning seq, topic, key, value"
    )


async def stage(connection: asyncpg.Connection, schema: str, rows: list[OutboxRow]) -> None:
    """Add rows inside the caller's transaction."""
    if not rows:
        return
    await connection.execute(
        _insert_sql(schema),
        [row.topic for row in rows],
        [row.key for row in rows],
        [row.value for row in rows],
    )


async def relay(pool: asyncpg.Pool, producer: AIOKafkaProducer, schema: str) -> int:
    """Publish every pending row in order and delete it once the broker has it.
    Rows claimed by another instance are skipped, so instances share the work."""
    published = 0
    while True:
        async with pool.acquire() as connection, connection.transaction():
            rows = sorted(await connection.fetch(_claim_sql(schema), RELAY_BATCH_MAX), key=lambda row: row["seq"])
            if not rows:
                return published
            futures = [await producer.send(row["topic"], row["value"], key=row["key"]) for row in rows]
            for future in futures:
                await future
        published += len(rows)
        if len(rows) < RELAY_BATCH_MAX:
            return published


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
