"""The benchmark's baselines: one hop that consumes a topic and produces every
record unchanged to the next, with the pipeline's producer and consumer
settings and no logic. Four of these in four processes are what the pipeline
is compared with.

    python -m tokenhub.bench.passthrough CLIENT BOOTSTRAP SOURCE_TOPIC TARGET_TOPIC

CLIENT is the Kafka client the hop uses:
- `aiokafka`: the services' client, on their event loop (uvloop) and with their
  way of publishing (`services.common.kafka.publish`); the baseline the
  pipeline's ratio is taken against.
- `confluent`: confluent-kafka (librdkafka, compiled), the client of
  FastStream's confluent broker, in a plain poll loop: what the same hop costs
  when records are decoded and batched in C.
- `faststream`: FastStream's Kafka broker (aiokafka) with a batch subscriber
  set as the services set theirs (`services.common.app.subscribe`), publishing
  as the services do: what FastStream adds to the client.
- `faststream-confluent`: FastStream's confluent broker, the same subscriber,
  publishing through the broker without waiting per message, then awaiting
  every confirmation before the batch is acknowledged.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Final

import uvloop
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker, KafkaMessage

from tokenhub.services.common.app import BATCH_WAIT_MS, batch_subscriber_options, tolerant_parser
from tokenhub.services.common.kafka import (
    BATCH_RECORDS_MAX,
    FETCH_BYTES_MAX,
    FETCH_WAIT_MS_MAX,
    PARTITION_FETCH_BYTES_MAX,
    PRODUCER_BATCH_BYTES,
    PRODUCER_LINGER_MS,
    PRODUCER_REQUEST_BYTES_MAX,
    SESSION_TIMEOUT_MS,
    client_options,
    create_producer,
    publish,
)
from tokenhub.infra.settings import load_settings

CLIENTS: Final = ("aiokafka", "confluent", "faststream", "faststream-confluent")


async def aiokafka_hop(bootstrap_servers: str, source: str, target: str) -> None:
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap_servers, group_id=f"passthrough-{source}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=SESSION_TIMEOUT_MS, max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX,
                                fetch_max_bytes=FETCH_BYTES_MAX, fetch_max_wait_ms=FETCH_WAIT_MS_MAX, **client_options())
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


def confluent_hop(bootstrap_servers: str, source: str, target: str) -> None:
    """The same hop with librdkafka: a batch is consumed, produced, flushed (every
    record acknowledged by the broker, acks=all) and only then committed."""
    # librdkafka loads in the hop that measures it, not in every `tokenhub` command (which reads CLIENTS here).
    from confluent_kafka import Consumer, KafkaException, Producer

    settings = load_settings()
    security = settings.kafka_security().confluent_options()
    consumer = Consumer({
        **security,
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"passthrough-confluent-{source}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "max.partition.fetch.bytes": PARTITION_FETCH_BYTES_MAX,
        "fetch.max.bytes": FETCH_BYTES_MAX,
        "fetch.wait.max.ms": FETCH_WAIT_MS_MAX,
    })
    producer = Producer({
        **security,
        "bootstrap.servers": bootstrap_servers,
        "client.id": f"passthrough-confluent-{source}",
        "acks": "all",
        "enable.idempotence": settings.producer_idempotence,
        "linger.ms": PRODUCER_LINGER_MS,
        "batch.size": PRODUCER_BATCH_BYTES,
        "message.max.bytes": PRODUCER_REQUEST_BYTES_MAX,
        "partitioner": "murmur2_random",  # the Java client's and aiokafka's: a key goes to the same partition
    })
    stopping = False
    failures: list[object] = []

    def delivered(error: object, _record: object) -> None:
        if error is not None:
            failures.append(error)

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, stop)
    consumer.subscribe([source])
    try:
        while not stopping:
            records = consumer.consume(num_messages=BATCH_RECORDS_MAX, timeout=0.1)
            if not records:
                continue
            for record in records:
                if record.error():
                    raise KafkaException(record.error())
                producer.produce(target, record.value(), record.key(), on_delivery=delivered)
            if producer.flush(30) or failures:
                raise KafkaException(f"not every record was acknowledged: {failures[:1] or len(producer)}")
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()


async def faststream_hop(bootstrap_servers: str, source: str, target: str, *, confluent: bool) -> None:
    settings = batch_subscriber_options(f"passthrough-{'faststream-confluent' if confluent else 'faststream'}-{source}")
    if confluent:
        # As in confluent_hop: librdkafka loads only where it is measured.
        from faststream.confluent import KafkaBroker as ConfluentBroker
        from faststream.confluent import KafkaMessage as ConfluentMessage

        broker = ConfluentBroker(bootstrap_servers.split(","), client_id=f"passthrough-{source}", logger=None, acks="all",
                                 security=load_settings().kafka_security().faststream_security(),
                                 enable_idempotence=load_settings().producer_idempotence, linger_ms=PRODUCER_LINGER_MS,
                                 config={"batch.size": PRODUCER_BATCH_BYTES, "partitioner": "murmur2_random"})

        @broker.subscriber(source, polling_interval=BATCH_WAIT_MS / 1000, **settings)
        async def forward_confluent(body: list[bytes], message: ConfluentMessage) -> None:
            confirmations = [await broker.publish(record.value(), target, key=record.key(), no_confirm=True)
                             for record in message.raw_message]
            await asyncio.gather(*confirmations)
    else:
        broker = KafkaBroker(bootstrap_servers.split(","), client_id=f"passthrough-{source}", logger=None,
                             security=load_settings().kafka_security().faststream_security())
        producer = create_producer(bootstrap_servers, client_id=f"passthrough-{source}")

        @broker.subscriber(source, batch_timeout_ms=BATCH_WAIT_MS, parser=tolerant_parser, **settings)
        async def forward(body: list[bytes], message: KafkaMessage) -> None:
            await publish(producer, ((target, record.key, record.value) for record in message.raw_message))

        await producer.start()
    stopping = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signal_number, stopping.set)
    await broker.start()
    try:
        await stopping.wait()
    finally:
        await broker.stop()
        if not confluent:
            await producer.stop()


if __name__ == "__main__":
    client, arguments = sys.argv[1], sys.argv[2:5]
    if client == "confluent":
        confluent_hop(*arguments)
    elif client == "aiokafka":
        uvloop.run(aiokafka_hop(*arguments))  # the event loop the services run on
    elif client in ("faststream", "faststream-confluent"):
        uvloop.run(faststream_hop(*arguments, confluent=client == "faststream-confluent"))
    else:
        raise SystemExit(f"unknown client {client!r}: one of {', '.join(CLIENTS)}")
