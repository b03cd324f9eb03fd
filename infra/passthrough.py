"""The benchmark's baseline: one hop of plain aiokafka that consumes a topic
and produces every record unchanged to the next, with the pipeline's producer
settings, event loop and way of publishing, and no logic. Four of these in
four processes are what the pipeline is compared with.

    python -m tokenhub.infra.passthrough BOOTSTRAP SOURCE_TOPIC TARGET_TOPIC
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiokafka import AIOKafkaConsumer

from tokenhub.services.common.kafka import BATCH_RECORDS_MAX, FETCH_WAIT_MS_MAX, create_producer, publish


async def hop(bootstrap_servers: str, source: str, target: str) -> None:
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap_servers, group_id=f"passthrough-{source}",
                                auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_wait_ms=FETCH_WAIT_MS_MAX)
    producer = create_producer(bootstrap_servers, client_id=f"passthrough-{source}")
    await consumer.start()
    await producer.start()
    stopping = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signal_number, stopping.set)
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=BATCH_RECORDS_MAX)
            if await publish(producer, ((target, record.key, record.value)
                                        for records in batches.values() for record in records)):
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    uvloop.run(hop(*sys.argv[1:4]))  # the event loop the services run on
