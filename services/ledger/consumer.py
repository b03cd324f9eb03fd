"""The ledger's consumer: plain aiokafka with partitions assigned by the
instance itself (instance i of n takes partitions p with p mod n = i), offsets
kept in Postgres as a hint tagged with the broker's cluster id. No group join,
so a restart resumes in milliseconds instead of a rebalance. It reads
tokens.priced and budgets.configured, and closes past months on a timer."""

from __future__ import annotations

import asyncio
from typing import Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenhub.contracts.topics import BUDGETS_CONFIGURED, TOKENS_PRICED
from tokenhub.infra.topics import broker_cluster_id, topic_partitions
from tokenhub.services.common.kafka import (
    BATCH_RECORDS_MAX,
    FETCH_BYTES_MAX,
    FETCH_WAIT_MS_MAX,
    PARTITION_FETCH_BYTES_MAX,
    client_options,
)
from tokenhub.services.common.runtime import Runtime, maybe_crash
from tokenhub.services.ledger import handlers
from tokenhub.services.ledger.adapters import store

POLL_TIMEOUT_MS: Final = 200
METADATA_WAIT_S: Final = 30.0
MONTH_CHECK_INTERVAL_S: Final = 30.0
"""How often the clock is checked for a month that ended with a quota exhausted:
a restored quota may arrive this late after midnight, which a gateway tolerates."""
TOPICS: Final = (TOKENS_PRICED.name, BUDGETS_CONFIGURED.name)
HANDLERS: Final = {TOKENS_PRICED.name: handlers.post_records, BUDGETS_CONFIGURED.name: handlers.apply_budget_records}

log = structlog.get_logger()


class LedgerConsumer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.consumer: AIOKafkaConsumer | None = None
        self.task: asyncio.Task[None] | None = None
        self.cluster_id = ""

    async def start(self) -> None:
        bootstrap_servers, _ = self.runtime.settings.require_stack()
        self.cluster_id = await broker_cluster_id(bootstrap_servers, self.runtime.settings)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"tokenhub-ledger-{self.runtime.settings.instance_index}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX,
            fetch_max_bytes=FETCH_BYTES_MAX,
            fetch_max_wait_ms=FETCH_WAIT_MS_MAX,
            **client_options(self.runtime.settings),
        )
        await self.consumer.start()
        self.consumer.assign(await self._my_partitions())
        self.task = self.runtime.spawn("ledger-consumer", self._run)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.consumer is not None:
            await self.consumer.stop()

    async def _my_partitions(self) -> list[TopicPartition]:
        assert self.consumer is not None
        settings = self.runtime.settings
        bootstrap_servers, _ = settings.require_stack()
        deadline = asyncio.get_running_loop().time() + METADATA_WAIT_S
        mine: list[TopicPartition] = []
        for topic in TOPICS:
            while True:
                partitions = (await topic_partitions(bootstrap_servers, [topic], settings)).get(topic)
                if partitions:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"topic {topic} does not exist; run `tokenhub init`")
                await asyncio.sleep(0.5)
            mine += [TopicPartition(topic, p) for p in sorted(partitions)
                     if p % settings.instance_count == settings.instance_index]
        log.info("ledger_partitions_assigned", partitions=[f"{tp.topic}:{tp.partition}" for tp in mine],
                 instance=settings.instance_index, cluster_id=self.cluster_id)
        return mine

    async def _seek_to_stored(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        stored = await store.stored_offsets(self.runtime.db(), self.cluster_id, TOPICS)
        for partition in partitions:
            if (partition.topic, partition.partition) in stored:
                self.consumer.seek(partition, stored[(partition.topic, partition.partition)])
            else:
                # A new broker (other cluster id) or a first start: read from the start;
                # event ids make the republished history a no-op.
                await self.consumer.seek_to_beginning(partition)

    async def _run(self) -> None:
        """Resume from the offsets stored with the entries, then consume. Run under
        supervision (`Runtime.spawn`): when the database or broker goes away the
        whole of this runs again once it is back, so the position is always
        restored from what was stored, never from where the failed batch left the
        consumer; any other failure ends the process for its supervisor to restart."""
        if self.consumer is None:
            raise RuntimeError("the ledger consumer is not started")
        await self._seek_to_stored(list(self.consumer.assignment()))
        await self._consume()

    async def _consume(self) -> None:
        assert self.consumer is not None
        loop = asyncio.get_running_loop()
        next_month_check = loop.time()
        while True:
            if loop.time() >= next_month_check:
                next_month_check = loop.time() + MONTH_CHECK_INTERVAL_S
                if await handlers.close_past_months(self.runtime):
                    self.runtime.relay_soon()
            batches = await self.consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=BATCH_RECORDS_MAX)
            if not any(batches.values()):
                continue
            for topic in TOPICS:
                records = [record for tp, rs in batches.items() if tp.topic == topic for record in rs]
                if not records:
                    continue
                handle = HANDLERS[topic]
                await self.runtime.process(records, lambda batch, handle=handle: handle(self.runtime, batch))
                next_offsets = {tp.partition: max(record.offset for record in rs) + 1
                                for tp, rs in batches.items() if rs and tp.topic == topic}
                await store.save_offsets(self.runtime.db(), self.cluster_id, topic, next_offsets)
            maybe_crash(self.runtime.settings, "ledger.before_outbox_publish")
            self.runtime.relay_soon()
