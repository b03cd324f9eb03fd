"""Publishing in record batches puts every message where `send` would and keeps
each partition's order, large messages included."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from tokenhub.services.common.kafka import create_producer, publish

pytestmark = pytest.mark.asyncio(loop_scope="session")
PARTITIONS = 4


async def test_publish_places_and_orders_messages_as_send_would(backend) -> None:  # noqa: ANN001
    bootstrap_servers = backend.settings.bootstrap_servers
    topic = f"publish.check.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    keys = [f"payer-{index % 7}".encode() for index in range(3_000)]
    # Some values larger than a whole producer batch (512 KiB), so they travel alone.
    values = [(f"{index}:".encode() + (b"x" * (600 * 1024) if index in (5, 1_500) else b"y" * 700))
              for index in range(len(keys))]
    producer = create_producer(bootstrap_servers, client_id="publish-check")
    await producer.start()
    try:
        assert await publish(producer, ((topic, key, value) for key, value in zip(keys, values, strict=True))) == len(keys)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    received: dict[int, list[tuple[bytes, bytes]]] = {}
    try:
        partitions = [TopicPartition(topic, partition) for partition in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = asyncio.get_running_loop().time() + 30
        while sum(map(len, received.values())) < len(keys) and asyncio.get_running_loop().time() < deadline:
            for partition, records in (await consumer.getmany(timeout_ms=500)).items():
                received.setdefault(partition.partition, []).extend((record.key, record.value) for record in records)
    finally:
        await consumer.stop()
    assert sum(map(len, received.values())) == len(keys), f"after 30 s, {sum(map(len, received.values()))} of {len(keys)} records read back"
    expected_partition = {key: DefaultPartitioner()(key, list(range(PARTITIONS)), list(range(PARTITIONS))) for key in set(keys)}
    for partition, records in received.items():
        assert {key for key, _ in records} == {key for key, home in expected_partition.items() if home == partition}
        for key in {key for key, _ in records}:
            sent_order = [value for sent_key, value in zip(keys, values, strict=True) if sent_key == key]
            assert [value for got_key, value in records if got_key == key] == sent_order
