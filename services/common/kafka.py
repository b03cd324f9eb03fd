"""Kafka clients and record helpers shared by the services, the CLI and the tools.

Every client is made with `client_options(settings)`: the security protocol,
SASL credentials and certificate authority of the deployment come from the
settings (environment or the local stack's env file), never from code."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from tokenhub.infra.settings import Settings, load_settings

# acks=all with retries. The idempotent producer is on where the broker has one
# (Apache Kafka: `producer_idempotence`); the embedded broker has none, so there
# retries may duplicate, and every consumer dedups by event id either way.
PRODUCER_LINGER_MS: Final = 5
PRODUCER_BATCH_BYTES: Final = 512 * 1024
PRODUCER_REQUEST_BYTES_MAX: Final = 4 * 1024 * 1024
SESSION_TIMEOUT_MS: Final = 6_000  # a group join takes about half of it on the embedded broker
HEARTBEAT_INTERVAL_MS: Final = 2_000
FETCH_WAIT_MS_MAX: Final = 100
"""How long the broker may hold a fetch that found nothing new. At the client's
default (500 ms) a record waited about 200 ms for its consumer at every hop
when traffic is light (measured on the embedded broker: 8 ms at 10 ms, 29 ms
at 50 ms). Much lower costs throughput: at 20 ms the consumers' empty fetches
tripled the broker's CPU and the pipeline moved a quarter fewer events; at
100 ms it moves as many as at 500 ms, and p99 to the ledger at 1,000 events/s
offered fell under 0.6 s (`tokenhub bench --rate 1000`)."""
PARTITION_FETCH_BYTES_MAX: Final = 4 * 1024 * 1024
"""Per partition and fetch: room for a full batch of the largest events."""
FETCH_BYTES_MAX: Final = 2 * 1024 * 1024
"""What one fetch may bring (`fetch_max_bytes`): a full batch of BATCH_RECORDS_MAX
records of the largest event a service consumes (a LedgerPosted, about 1.6 KB).
The embedded broker applies this limit to each partition and ignores
PARTITION_FETCH_BYTES_MAX; at the client's default (50 MB), a service behind a
backlog received every record of a partition in one response and held it
several times over while parsing it (the socket's buffer, the response, the
records). Measured with one aiokafka consumer reading 150,000 records of
600 bytes from four partitions in batches of 1,000: peak RSS 79 MB at the
default, 42 MB at 2 MB (30 MB before the first fetch), CPU per record the same."""
BATCH_RECORDS_MAX: Final = 1_000
"""Records per handler call: large enough to amortise a transaction, small
enough that a batch commits well within the poll interval."""


def client_options(settings: Settings | None = None) -> dict[str, Any]:
    """The security options of every aiokafka client (producer, consumer, admin).
    Without `settings`, this process's settings: the environment, or the env file
    of the local stack that `tokenhub up` started."""
    return (settings or load_settings()).kafka_security().aiokafka_options()


def confluent_client_options(settings: Settings | None = None) -> dict[str, str]:
    """The same security options as librdkafka's configuration properties (confluent-kafka's clients)."""
    return (settings or load_settings()).kafka_security().confluent_options()


def usage_client_options(settings: Settings | None = None) -> dict[str, Any]:
    """The producer client's (`tokenhub.client.UsageClient`) security and idempotence."""
    settings = settings or load_settings()
    return {"security": settings.kafka_security(), "idempotent": settings.producer_idempotence}


def create_producer(bootstrap_servers: str, client_id: str, settings: Settings | None = None) -> AIOKafkaProducer:
    settings = settings or load_settings()
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all" if settings.producer_acks == "all" else 1,
        enable_idempotence=settings.producer_idempotence,
        linger_ms=PRODUCER_LINGER_MS,
        max_batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=PRODUCER_REQUEST_BYTES_MAX,
        request_timeout_ms=30_000,
        retry_backoff_ms=200,
        **client_options(settings),
    )


async def send_events(bootstrap_servers: str, topic: str, events: Sequence[tuple[bytes, bytes]], *,
                      client_id: str = "tokenhub-cli", settings: Settings | None = None) -> None:
    """Send (key, value) events to `topic` on a producer of their own and return
    once the broker has every one: for tools that publish a few events at a time
    (configuration changes, a budget), not for a service's stream. `settings`
    as for `create_producer`."""
    producer = create_producer(bootstrap_servers, client_id=client_id, settings=settings)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in events]
        for future in futures:
            await future
    finally:
        await producer.stop()


def header(record: ConsumerRecord, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return value
    return None


_PARTITIONER: Final = DefaultPartitioner()


async def publish(producer: AIOKafkaProducer, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    """Send (topic, key, value) messages and return once the broker has every one.

    Messages are packed into one record batch per partition and sent batch by
    batch: `producer.send` per message cost 15 µs of CPU, a batch append about 3
    (measured on the embedded broker). Partitions are chosen as `send` chooses
    them (the client's default partitioner on the key), and each partition's
    messages keep their order."""
    by_partition: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
    partitions: dict[str, list[int]] = {}
    chosen: dict[tuple[str, bytes | None], int] = {}
    count = 0
    for topic, key, value in messages:
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        partition = chosen.get((topic, key))
        if partition is None:  # a message without a key goes where the partitioner says, each time
            partition = _PARTITIONER(key, partitions[topic], partitions[topic])
            if key is not None:
                chosen[(topic, key)] = partition
        by_partition.setdefault((topic, partition), []).append((key, value))
        count += 1
    futures: list[asyncio.Future] = []
    for (topic, partition), records in by_partition.items():
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                if batch.record_count():
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # larger than a batch: alone
                    futures.append(await producer.send(topic, value, key=key, partition=partition))
                    batch = producer.create_batch()
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
    for future in futures:
        await future
    return count
