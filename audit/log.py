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
from aiokafka import AIOKafkaConsumer

from tokenhub.services.common.kafka import client_options

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
    `idle_timeout_s` without a record: the broker's end offsets are not trusted."""
    # Subscribed without a group, the consumer is given every partition of the topic
    # once it has the topic's metadata. (Asked right after start, Apache Kafka's
    # metadata may hold no topic yet: the client's first refresh asks for none.)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
                                **client_options())
    await consumer.start()
    records: list[TopicRecord] = []
    seen: set[object] = set()
    try:
        if topic not in await consumer.topics():
            return []
        deadline = time.monotonic() + ASSIGNMENT_WAIT_S
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partition of {topic} assigned after {ASSIGNMENT_WAIT_S:.0f} s")
            await asyncio.sleep(POLL_MS / 1000)
        partitions = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*partitions)
        last_record = time.monotonic()
        reported = 0
        while expected == 0 or len(seen) < expected:
            batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=READ_BATCH_MAX)
            if not any(batches.values()):
                if time.monotonic() - last_record > idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            for partition_records in batches.values():
                for record in partition_records:
                    records.append(TopicRecord(record.partition, record.offset, record.key, record.value))
                    key = distinct(record.value) if distinct else (record.partition, record.offset)
                    if key is not None:
                        seen.add(key)
            if len(records) - reported >= PROGRESS_EVERY:
                reported = len(records)
                progress(f"read {topic}", len(seen), expected or None)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
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
