"""The operations page's reads beyond SQL: dead-lettered records from the
`deadletter` topic (the services write them there with their reason in
headers) and each service's lag, from its stored offsets against the topics'
ends (`infra.status`, as `tokenhub status` measures it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenhub.contracts.topics import DEAD_LETTER
from tokenhub.infra.settings import Settings
from tokenhub.services.common.kafka import client_options

READ_WAIT_MS: Final = 500
"""An empty fetch this long after the last record ends the read."""
READS_MAX: Final = 200
"""Fetches per call at most: the read is bounded whatever the topic holds."""
TIMEOUT_MS: Final = 5_000
HEADER_PREFIX: Final = "tokenhub_"
DETAIL: Final = ("service", "topic", "partition", "offset", "reason", "dead_lettered_at")


@dataclass
class DeadLetters:
    total: int
    by_service: dict[str, int]
    items: list[dict[str, Any]]


def dead_letter_row(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...], key: bytes | None,
                    value: bytes | None, position: int) -> dict[str, Any]:
    """One dead-lettered record as the API shows it: its reason and origin from
    the headers the services' runtime wrote, the size of its value."""
    detail = {name[len(HEADER_PREFIX):]: raw.decode(errors="replace") for name, raw in headers
              if name.startswith(HEADER_PREFIX) and name[len(HEADER_PREFIX):] in DETAIL}
    return {
        "position": position,
        "service": detail.get("service", ""),
        "source_topic": detail.get("topic", ""),
        "source_partition": int(detail["partition"]) if detail.get("partition", "").isdigit() else None,
        "source_offset": int(detail["offset"]) if detail.get("offset", "").isdigit() else None,
        "reason": detail.get("reason", ""),
        "dead_lettered_at": detail.get("dead_lettered_at", ""),
        "key": key.decode(errors="replace") if key is not None else None,
        "value_bytes": len(value or b""),
    }


async def dead_letters(settings: Settings, limit: int) -> DeadLetters:
    """Every record on the `deadletter` topic counted by service; the last
    `limit` of them listed, oldest first."""
    bootstrap_servers, _ = settings.require_stack()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                request_timeout_ms=TIMEOUT_MS, **client_options(settings))
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(DEAD_LETTER.name, partition)
                      for partition in sorted(consumer.partitions_for_topic(DEAD_LETTER.name) or ())]
        result = DeadLetters(0, {}, [])
        if not partitions:
            return result
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for _ in range(READS_MAX):
            batches = await consumer.getmany(timeout_ms=READ_WAIT_MS)
            if not any(batches.values()):
                break
            for partition in sorted(batches, key=lambda each: each.partition):
                for record in batches[partition]:
                    row = dead_letter_row(list(record.headers or ()), record.key, record.value, result.total)
                    result.total += 1
                    result.by_service[row["service"]] = result.by_service.get(row["service"], 0) + 1
                    result.items.append(row)
                    if len(result.items) > limit:
                        result.items.pop(0)
        return result
    finally:
        await consumer.stop()
