"""The API's readers of topics: quota state (from the start of `ledger.posted`
and `budgets.configured`, held in memory) and webhook notices (from where the
API last stopped on `budget.alerts`, `invoices.issued`, `settlements.netted`
and `usage.rejected`). Plain aiokafka with partitions assigned by the reader
itself: no consumer group to join, so a start takes milliseconds, not seconds.

Both are supervised like the services' consumers: an unavailable broker or
database is waited out, anything else stops the process loudly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import msgspec
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from tokenhub.api import webhooks
from tokenhub.api.adapters import store
from tokenhub.api.quota import POSTED_DECODER, QuotaBook
from tokenhub.contracts.budgets import BudgetSet
from tokenhub.contracts.events import decode
from tokenhub.contracts.topics import (
    BUDGET_ALERTS,
    BUDGETS_CONFIGURED,
    INVOICES_ISSUED,
    LEDGER_POSTED,
    SETTLEMENTS_NETTED,
    USAGE_REJECTED,
)
from tokenhub.infra.topics import broker_cluster_id, topic_partitions
from tokenhub.services.common.kafka import FETCH_WAIT_MS_MAX, PARTITION_FETCH_BYTES_MAX, client_options

POLL_TIMEOUT_MS: Final = 200
BATCH_RECORDS_MAX: Final = 5_000
"""Records per poll: quota state decodes a few fields of each, ~2 µs a record."""
METADATA_WAIT_S: Final = 60.0
RETRY_S: Final = 1.0
TRANSIENT_ERRORS: Final = (KafkaError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError, OSError,
                           asyncio.TimeoutError)
QUOTA_TOPICS: Final = (BUDGETS_CONFIGURED.name, LEDGER_POSTED.name)
WEBHOOK_TOPICS: Final = (BUDGET_ALERTS.name, INVOICES_ISSUED.name, SETTLEMENTS_NETTED.name, USAGE_REJECTED.name)
KIND_OF_TYPE: Final = {"budget.threshold_crossed", "budget.quota_exhausted", "budget.quota_restored", "invoice.issued",
                       "settlement.netted"}

log = structlog.get_logger()


def _consumer(bootstrap_servers: str, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, client_id=client_id, group_id=None,
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX, fetch_max_wait_ms=FETCH_WAIT_MS_MAX,
                            **client_options())


async def _partitions(bootstrap_servers: str, topics: tuple[str, ...]) -> list[TopicPartition]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + METADATA_WAIT_S
    found: list[TopicPartition] = []
    for topic in topics:
        # Asked of the cluster: on Apache Kafka an unsubscribed consumer's metadata may hold no topic.
        while not (partitions := (await topic_partitions(bootstrap_servers, [topic])).get(topic)):
            if loop.time() > deadline:
                raise RuntimeError(f"topic {topic} does not exist; run `tokenhub init`")
            await asyncio.sleep(0.5)
        found += [TopicPartition(topic, partition) for partition in sorted(partitions)]
    return found


async def _reached(consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> bool:
    for partition, target in targets.items():
        if await consumer.position(partition) < target:
            return False
    return True


async def supervise(name: str, body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` for ever: transient failures are retried, a bug ends the process."""
    while True:
        try:
            await body()
            return
        except asyncio.CancelledError:
            raise
        except TRANSIENT_ERRORS as error:
            log.warning("api_task_paused", task=name, error=repr(error), retry_in_s=RETRY_S)
            await asyncio.sleep(RETRY_S)
        except BaseException:
            log.exception("api_task_failed", task=name)
            os._exit(1)  # a bug, not bad data: stop so the supervisor restarts the API


class QuotaFollower:
    """Keeps a QuotaBook current. `caught_up` is set once everything on the
    topics when it started has been applied; until then answers would be low."""

    def __init__(self, bootstrap_servers: str, book: QuotaBook) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.book = book
        self.caught_up = asyncio.Event()
        self.unreadable = 0
        self.last_record_at: datetime | None = None

    async def run(self) -> None:
        consumer = _consumer(self.bootstrap_servers, "tokenhub-api-quota")
        await consumer.start()
        try:
            partitions = await _partitions(self.bootstrap_servers, QUOTA_TOPICS)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            # The embedded broker under-reports end offsets (the last batch's first
            # offset + 1): reaching them means that batch is being read, so the
            # first empty poll after them is the end of what was there at start.
            targets = await consumer.end_offsets(partitions)
            # Each chain is applied by sequence, so what was applied before a
            # restart of this loop is skipped when it is read again.
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=BATCH_RECORDS_MAX)
                if any(batches.values()):
                    self._apply(batches)
                    self.last_record_at = datetime.now(UTC)
                elif not self.caught_up.is_set() and await _reached(consumer, targets):
                    self.caught_up.set()
                    log.info("quota_state_caught_up", postings=self.book.applied, duplicates=self.book.duplicates,
                             payers=len({payer for payer, _ in self.book.spend}))
        finally:
            await consumer.stop()

    def _apply(self, batches: dict[TopicPartition, list[Any]]) -> None:
        budgets = []
        postings = []
        for partition, records in batches.items():
            for record in records:
                try:
                    if partition.topic == BUDGETS_CONFIGURED.name:
                        budgets.append(decode(BudgetSet, record.value))
                    else:
                        postings.append(POSTED_DECODER.decode(record.value))
                except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
                    # The ledger dead-letters what it cannot read; quota state skips the same.
                    self.unreadable += 1
        self.book.apply_budgets(budgets)  # budgets first: a batch's postings may need them
        self.book.apply_posted(postings)


NoticeSink = Callable[[list[webhooks.Notice]], Awaitable[None]]


class WebhookFollower:
    """Turns events on the alert, invoice, settlement and rejected topics into
    notices for the webhook dispatcher, and keeps its offsets in the api schema."""

    def __init__(self, bootstrap_servers: str, writer: asyncpg.Pool, sink: NoticeSink,
                 rejected_bu: Callable[[list[str]], Awaitable[dict[str, str | None]]]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.writer = writer
        self.sink = sink
        self.rejected_bu = rejected_bu
        self.bursts = webhooks.BurstCounter()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        cluster_id = await broker_cluster_id(self.bootstrap_servers)
        consumer = _consumer(self.bootstrap_servers, "tokenhub-api-webhooks")
        await consumer.start()
        try:
            partitions = await _partitions(self.bootstrap_servers, WEBHOOK_TOPICS)
            consumer.assign(partitions)
            async with self.writer.acquire() as connection:
                stored = await store.load_offsets(connection, cluster_id)
            # First start on this broker: from the end (a subscription hears of what
            # happens after it). Events already delivered are never sent twice:
            # deliveries are keyed by subscription and event.
            ends = await consumer.end_offsets([tp for tp in partitions if (tp.topic, tp.partition) not in stored])
            for tp in partitions:
                consumer.seek(tp, stored.get((tp.topic, tp.partition), ends.get(tp, 0)))
            self.ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=BATCH_RECORDS_MAX)
                if not any(batches.values()):
                    continue
                await self.sink(await self._notices(batches))
                offsets = {(tp.topic, tp.partition): records[-1].offset + 1 for tp, records in batches.items() if records}
                async with self.writer.acquire() as connection:
                    await store.save_offsets(connection, cluster_id, offsets)
        finally:
            await consumer.stop()

    async def _notices(self, batches: dict[TopicPartition, list[Any]]) -> list[webhooks.Notice]:
        notices: list[webhooks.Notice] = []
        rejected: list[dict[str, Any]] = []
        for partition, records in batches.items():
            for record in records:
                try:
                    event = orjson.loads(record.value)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(event, dict) or "id" not in event:
                    continue
                if partition.topic == USAGE_REJECTED.name:
                    rejected.append(event)
                    continue
                kind = event.get("type")
                if partition.topic == INVOICES_ISSUED.name:
                    kind = "invoice.issued"
                elif partition.topic == SETTLEMENTS_NETTED.name:
                    kind = "settlement.netted"
                notice = webhooks.notice_of(str(kind), event) if kind in KIND_OF_TYPE else None
                if notice is not None:
                    notices.append(notice)
        if rejected:
            consumers = await self.rejected_bu([str(event.get("rejected_ref", "")) for event in rejected])
            notices += self.bursts.add(
                webhooks.Rejection(str(event["id"]), _moment(event.get("event_time")), str(event.get("reason_code", "unknown")),
                                   consumers.get(str(event.get("rejected_ref", ""))))
                for event in rejected)
        return notices


def _moment(text: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
