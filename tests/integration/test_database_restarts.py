"""A real PostgreSQL stopped and started under a running service (issue 15,
defects 1 and 3): healthy records wait for the database instead of being
dead-lettered, the outbox relay waits instead of ending the process, and the
ledger's consumer resumes instead of dying quietly while its process lives.

These tests stop their database, so they run on a stack of their own (a second
embedded PostgreSQL and broker), never on the session's."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from prometheus_client import REGISTRY

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import Priced
from tokenhub.contracts.topics import DEAD_LETTER, TOKENS_PRICED
from tokenhub.infra.embedded import EmbeddedStack
from tokenhub.infra.migrate import migrate
from tokenhub.infra.pipeline import wait_until
from tokenhub.infra.settings import Settings
from tokenhub.infra.topics import create_topics
from tokenhub.services.common.outbox import OutboxRow, stage
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.ledger.consumer import LedgerConsumer
from tokenhub.services.ledger.handlers import SCHEMA as LEDGER_SCHEMA

pytestmark = pytest.mark.asyncio(loop_scope="session")

GOLDEN_PRICED = orjson.loads((__import__("pathlib").Path(__file__).resolve().parents[2]
                              / "contracts" / "golden" / "priced.json").read_bytes())
WAIT_S = 60.0


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[EmbeddedStack]:
    own = EmbeddedStack()
    try:
        endpoints = await asyncio.to_thread(own.start)
        await migrate(endpoints.database_url)
        await create_topics(endpoints.bootstrap_servers)
        connection = await asyncpg.connect(endpoints.database_url)
        await connection.execute("create table public.written (key text primary key)")
        await connection.close()
        yield own
    finally:
        own.stop()


def _settings(stack: EmbeddedStack) -> Settings:
    return Settings(bootstrap_servers=stack.endpoints.bootstrap_servers, database_url=stack.endpoints.database_url)


def _pauses(task: str) -> float:
    return REGISTRY.get_sample_value("tokenhub_task_pauses_total", {"task": task}) or 0.0


class RefusingDatabase:
    """PostgreSQL in a smart shutdown: it waits for the session held open here
    and meanwhile refuses every new connection with SQLSTATE 57P03, asyncpg's
    CannotConnectNowError, as while it starts up. `release` lets it stop;
    `start` brings it back on the same data, port and socket."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.holder: asyncpg.Connection | None = None

    async def refuse(self) -> None:
        self.holder = await asyncpg.connect(self.stack.endpoints.database_url)
        assert self.stack.postgres.pid is not None
        os.kill(self.stack.postgres.pid, signal.SIGTERM)

        async def refusing() -> bool:
            try:
                connection = await asyncpg.connect(self.stack.endpoints.database_url)
            except asyncpg.CannotConnectNowError:
                return True
            await connection.close()
            return False
        await wait_until(refusing, WAIT_S, "PostgreSQL to refuse new connections")

    async def release_and_start(self) -> None:
        if self.holder is not None:
            await self.holder.close()

        async def stopped() -> bool:
            return self.stack.postgres.exit_code() is not None
        await wait_until(stopped, WAIT_S, "PostgreSQL to stop")
        await asyncio.to_thread(self.stack.postgres.restart)


async def _stop_fast(stack: EmbeddedStack) -> None:
    assert stack.postgres.pid is not None
    os.killpg(stack.postgres.pid, signal.SIGINT)  # PostgreSQL's fast shutdown: sessions are ended

    async def stopped() -> bool:
        return stack.postgres.exit_code() is not None
    await wait_until(stopped, WAIT_S, "PostgreSQL to stop")


def _record(key: str, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic="usage.reported", partition=0, offset=offset, timestamp=0, timestamp_type=0,
                          key=key.encode(), value=b"{}", checksum=None, serialized_key_size=len(key),
                          serialized_value_size=2, headers=[])


async def _read(bootstrap_servers: str, topic: str, keys: set[bytes]) -> list[ConsumerRecord]:
    """The records of `topic` whose key is one of `keys`, read from the start until
    the topic has been idle for two seconds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[ConsumerRecord] = []
    try:
        idle_polls = 0
        while idle_polls < 4:
            batches = await consumer.getmany(timeout_ms=500)
            records = [record for batch in batches.values() for record in batch]
            idle_polls = 0 if records else idle_polls + 1
            found += [record for record in records if record.key in keys]
    finally:
        await consumer.stop()
    return found


async def test_healthy_records_wait_for_a_starting_database_and_are_not_dead_lettered(stack: EmbeddedStack) -> None:
    """Defect 3: CannotConnectNowError was not infrastructure, so the batch was
    retried three times, split, and its healthy records dead-lettered."""
    runtime = Runtime(_settings(stack), service="restarts-process", schema="metering")
    await runtime.start()
    keys = [f"healthy-{uuid.uuid4().hex[:8]}-{index}" for index in range(3)]
    failures: list[str] = []

    async def handle(records: Any) -> None:
        try:
            async with runtime.db().acquire() as connection:
                await connection.executemany("insert into public.written (key) values ($1) on conflict do nothing",
                                             [(record.key.decode(),) for record in records])
        except Exception as error:
            failures.append(type(error).__name__)
            raise

    database = RefusingDatabase(stack)
    try:
        await database.refuse()
        await runtime.db().expire_connections()  # the pool's sessions are replaced at their next use
        processing = asyncio.create_task(runtime.process([_record(key, index) for index, key in enumerate(keys)], handle))

        async def waited_long_enough() -> bool:
            # Longer than the bounded retries of a failing batch (0.2 + 1 + 3 s) took to dead-letter it.
            return failures.count("CannotConnectNowError") >= 6 or processing.done()
        await wait_until(waited_long_enough, WAIT_S, "the batch to meet a refusing PostgreSQL six times")
        assert not processing.done(), f"the batch gave up while PostgreSQL was starting: {processing}"
        await database.release_and_start()
        await asyncio.wait_for(processing, WAIT_S)
        async with runtime.db().acquire() as connection:
            written = {row["key"] for row in await connection.fetch("select key from public.written where key = any($1)", keys)}
            dead_lettered = await connection.fetchval("select value from metering.counters where name = 'dead_lettered'")
        assert written == set(keys)
        assert dead_lettered is None
        assert await _read(stack.endpoints.bootstrap_servers, DEAD_LETTER.name, {key.encode() for key in keys}) == []
    finally:
        await runtime.stop()


async def test_the_outbox_relay_waits_for_a_starting_database_instead_of_ending_the_process(stack: EmbeddedStack) -> None:
    """Defect 3: the relay ended its process on CannotConnectNowError."""
    exits: list[int] = []
    runtime = Runtime(_settings(stack), service="restarts-relay", schema="pricing", exit=exits.append)
    await runtime.start()
    keys = [f"relayed-{uuid.uuid4().hex[:8]}-{index}".encode() for index in range(5)]
    connection = await asyncpg.connect(stack.endpoints.database_url)
    async with connection.transaction():  # staged behind the relay's back: it only learns of them below
        await stage(connection, "pricing", [OutboxRow(TOKENS_PRICED.name, key, b'{"test": true}') for key in keys])
    await connection.close()
    database = RefusingDatabase(stack)
    try:
        await database.refuse()
        await runtime.db().expire_connections()
        pauses_before = _pauses("restarts-relay-relay")
        runtime.relay_soon()

        async def paused() -> bool:
            return _pauses("restarts-relay-relay") >= pauses_before + 2 or bool(exits)
        await wait_until(paused, WAIT_S, "the relay to meet a refusing PostgreSQL twice")
        assert exits == []
        await database.release_and_start()

        async def relayed() -> bool:
            async with runtime.db().acquire() as check:
                return not await check.fetchval("select count(*) from pricing.outbox")
        await wait_until(relayed, WAIT_S, "the relay to publish the outbox once PostgreSQL is back")
        published = await _read(stack.endpoints.bootstrap_servers, TOKENS_PRICED.name, set(keys))
        assert sorted(record.key for record in published) == sorted(keys)
        assert exits == []
    finally:
        await runtime.stop()


def _priced(payer: str, index: int) -> bytes:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{payer}/{index}"))
    return canonical_json(Priced.model_validate({
        **GOLDEN_PRICED, "id": event_id, "consumed_id": event_id, "cause_id": event_id, "payer_bu": payer,
        "consumer_bu": payer}))


async def test_the_ledger_consumer_resumes_after_the_database_was_down_longer_than_a_batch_waits(
        stack: EmbeddedStack) -> None:
    """Defect 1: `_run` caught the connection error, slept, and sought to the stored
    offsets inside its `except` block; with the database still down that raised
    out of the loop, the consumer task ended and the process lived on, idle."""
    exits: list[int] = []
    runtime = Runtime(_settings(stack), service=LEDGER_SCHEMA, schema=LEDGER_SCHEMA, exit=exits.append,
                      infrastructure_patience_s=0.5)
    await runtime.start()
    consumer = LedgerConsumer(runtime)
    await consumer.start()
    payer = f"restarts-{uuid.uuid4().hex[:8]}"
    values = [_priced(payer, index) for index in range(20)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.endpoints.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await _stop_fast(stack)
        pauses_before = _pauses("ledger-consumer")
        for value in values:
            await producer.send_and_wait(TOKENS_PRICED.name, value, key=payer.encode())

        async def waited() -> bool:
            return _pauses("ledger-consumer") >= pauses_before + 3 or (consumer.task is not None and consumer.task.done())
        await wait_until(waited, WAIT_S, "the ledger consumer to wait out the database three times")
        assert consumer.task is not None and not consumer.task.done(), "the consumer task ended while its process lives"
        await asyncio.to_thread(stack.postgres.restart)
        connection = await asyncpg.connect(stack.endpoints.database_url)
        try:
            async def posted() -> bool:
                return await connection.fetchval("select count(*) from ledger.journal where chain = $1", payer) == 20
            await wait_until(posted, WAIT_S, "the ledger to post the 20 Priced once PostgreSQL is back")
            chain = [row["sequence"] for row in await connection.fetch(
                "select sequence from ledger.journal where chain = $1 order by sequence", payer)]
        finally:
            await connection.close()
        assert chain == list(range(1, 21))
        assert exits == []
    finally:
        await producer.stop()
        await consumer.stop()
        await runtime.stop()
