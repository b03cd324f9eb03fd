"""The embedded stack is real and leaves nothing behind."""

from __future__ import annotations

import asyncio

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tokenhub.infra.embedded import EmbeddedStack


async def _round_trip(bootstrap_servers: str, database_url: str) -> tuple[bytes, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        metadata = await producer.send_and_wait("stack.check", b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partition = TopicPartition("stack.check", metadata.partition)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        record = await asyncio.wait_for(consumer.getone(), timeout=10)
    finally:
        await consumer.stop()
    connection = await asyncpg.connect(database_url)
    try:
        one = await connection.fetchval("select 1")
    finally:
        await connection.close()
    return record.value, one


@pytest.mark.asyncio(loop_scope="session")
async def test_broker_and_database_work_and_stop_leaves_no_process(tmp_path) -> None:
    stack = EmbeddedStack(state_dir=tmp_path)
    endpoints = await asyncio.to_thread(stack.start)
    pids = [stack.broker.pid, stack.postgres.pid]
    try:
        value, one = await _round_trip(endpoints.bootstrap_servers, endpoints.database_url)
        assert (value, one) == (b"hello", 1)
        postgres_children = psutil.Process(stack.postgres.pid).children(recursive=True)
        assert postgres_children, "postgres runs its background workers"
    finally:
        stack.stop()
        stack.stop()  # idempotent
    assert all(pid is not None and not psutil.pid_exists(pid) for pid in pids)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in postgres_children)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_restarted_broker_is_empty_and_has_a_new_cluster_id(tmp_path) -> None:
    stack = EmbeddedStack(state_dir=tmp_path)
    endpoints = await asyncio.to_thread(stack.start)
    try:
        await _round_trip(endpoints.bootstrap_servers, endpoints.database_url)
        first_cluster = stack.broker.cluster_id
        await asyncio.to_thread(stack.broker.restart)
        consumer = AIOKafkaConsumer(bootstrap_servers=endpoints.bootstrap_servers, group_id=None)
        await consumer.start()
        try:
            topics = await consumer.topics()
        finally:
            await consumer.stop()
        assert "stack.check" not in topics
        assert stack.broker.cluster_id != first_cluster
    finally:
        stack.stop()
