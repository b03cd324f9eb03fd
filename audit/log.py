"""Reading the log as an auditor does: events as plain JSON with exact numbers,
and every record of a topic in partition and offset order."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, NamedTuple

import msgspec
import orjson

from tokenhub.services.common.kafka import confluent_client_options

READ_BATCH_MAX: Final = 5_000
"""Records per fetch while reading a topic: a few MB of JSON at most."""
POLL_MS: Final = 200
ASSIGNMENT_WAIT_S: Final = 30.0
"""A topic's metadata arrives within a round trip or two; this long only on a
machine so loaded that reading the log would fail anyway."""
PROGRESS_EVERY: Final = 10_000
"""Records between two progress reports while reading a topic."""

Progress = Callable[[str, int, int | None], None]
"""(what, done, total or None): how long runs report that they move."""


def silent(what: str, done: int, total: int | None) -> None:
    return None


def loads(raw: bytes | str) -> dict[str, Any]:
    """JSON with every non-integer number as an exact Decimal."""
    return json.loads(raw, parse_float=Decimal)


def loads_many(raw: bytes | str) -> dict[str, Any]:
    """For reading a whole log: orjson, several times faster than `loads`. It
    would read a float as a float, so every figure taken from such an event goes
    through `exact`, which refuses one (the contract sends amounts as strings)."""
    return orjson.loads(raw)


class NotExact(ValueError):
    """An amount or quantity in the log is not an exact number (a float, say)."""


def exact(value: Any) -> Decimal:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return Decimal(value)
    raise NotExact(f"{value!r} is not an exact amount or quantity")


class TopicRecord(NamedTuple):
    """One record as read (a tuple: one is made per record of a topic read whole)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes


async def read_topic(bootstrap_servers: str, topic: str, *, expected: int = 0, idle_timeout_s: float = 3.0,
                     distinct: Callable[[bytes], object] | None = None, progress: Progress = silent) -> list[TopicRecord]:
    """Every record of `topic`, in partition and offset order. Stops once
    `expected` distinct records (by `distinct`) were read, or after
    `idle_timeout_s` without a record: the broker's end offsets are not trusted.

    Read with librdkafka (confluent-kafka), whose records cost about a fifth of
    aiokafka's in this process's CPU (a topic read whole is 80,000 records and
    more, read while verify computes). Its blocking poll waits in a thread, so
    the event loop keeps running; the records are taken in on the loop."""
    # librdkafka loads where a topic is read, not in every `tokenhub` command.
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    # Assigned every partition from the beginning, without a group: nothing is joined or committed.
    consumer = Consumer({
        **confluent_client_options(),
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"tokenhub-audit-{topic}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "fetch.wait.max.ms": POLL_MS,
    })
    passing = (KafkaError._PARTITION_EOF, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)
    loop = asyncio.get_running_loop()
    records: list[TopicRecord] = []
    seen: set[object] = set()
    polling: asyncio.Future[Any] | None = None

    async def blocking(call: Callable[..., Any], *arguments: Any) -> Any:
        """`call` in a thread, waited for even if this task is cancelled meanwhile:
        the consumer is closed only once no call of it runs."""
        nonlocal polling
        polling = loop.run_in_executor(None, call, *arguments)
        return await asyncio.shield(polling)

    def take() -> list[Any]:
        """The records fetched so far, once there is one (`consume` alone would
        wait for a whole batch or the timeout)."""
        first = consumer.poll(POLL_MS / 1000)
        return [] if first is None else [first, *consumer.consume(READ_BATCH_MAX - 1, 0)]

    try:
        deadline = time.monotonic() + ASSIGNMENT_WAIT_S
        while True:
            metadata = await blocking(consumer.list_topics, None, ASSIGNMENT_WAIT_S)
            if topic not in metadata.topics:
                return []
            if partitions := sorted(metadata.topics[topic].partitions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partition of {topic} known after {ASSIGNMENT_WAIT_S:.0f} s")
            await asyncio.sleep(POLL_MS / 1000)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
        last_record = time.monotonic()
        reported = 0
        while expected == 0 or len(seen) < expected:
            batch = await blocking(take)
            if not batch:
                if time.monotonic() - last_record > idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            for record in batch:
                if (error := record.error()) is not None:
                    if error.fatal() or not (error.retriable() or error.code() in passing):
                        raise KafkaException(error)
                    continue  # the end of a partition, or a connection librdkafka restores by itself
                value = record.value()
                records.append(TopicRecord(record.partition(), record.offset(), record.key(), value))
                key = distinct(value) if distinct else (record.partition(), record.offset())
                if key is not None:
                    seen.add(key)
            if len(records) - reported >= PROGRESS_EVERY:
                reported = len(records)
                progress(f"read {topic}", len(seen), expected or None)
    finally:
        if polling is not None and not polling.done():
            await asyncio.wait([polling])
        await loop.run_in_executor(None, consumer.close)
    records.sort(key=lambda record: (record.partition, record.offset))
    progress(f"read {topic}", len(seen), expected or None)
    return records


class _EventId(msgspec.Struct):
    id: Any = None


_EVENT_ID_DECODER: Final = msgspec.json.Decoder(_EventId)


def event_id(value: bytes) -> object:
    """An event's id, read without building the rest of it; the bytes themselves
    for what is not a JSON object."""
    try:
        return _EVENT_ID_DECODER.decode(value).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return value
