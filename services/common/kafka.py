"""Kafka producers and record helpers shared by the services."""

from __future__ import annotations

from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

# acks=all with retries and no idempotent producer (the embedded broker has
# none): retries may duplicate, and every consumer dedups by event id.
PRODUCER_LINGER_MS: Final = 5
PRODUCER_BATCH_BYTES: Final = 512 * 1024
PRODUCER_REQUEST_BYTES_MAX: Final = 4 * 1024 * 1024
SESSION_TIMEOUT_MS: Final = 6_000  # a group join takes about half of it on the embedded broker
HEARTBEAT_INTERVAL_MS: Final = 2_000
FETCH_WAIT_MS_MAX: Final = 20
"""How long the broker may hold a fetch that found nothing new. The client's
default (500 ms) is paid at every hop when traffic is light: measured on the
embedded broker, a record waited 200 ms at the median for its consumer at the
default and 8-29 ms at 10-50 ms. An idle consumer then asks 50 times a second,
which costs the broker and the client next to nothing."""
BATCH_RECORDS_MAX: Final = 1_000
"""Records per handler call: large enough to amortise a transaction, small
enough that a batch commits well within the poll interval."""


def create_producer(bootstrap_servers: str, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=PRODUCER_LINGER_MS,
        max_batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=PRODUCER_REQUEST_BYTES_MAX,
        request_timeout_ms=30_000,
        retry_backoff_ms=200,
    )


def header(record: ConsumerRecord, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return value
    return None
