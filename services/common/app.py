"""FastStream wiring shared by the services: one broker, batch subscribers with
every option explicit, and at-least-once acknowledgement."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka.structs import ConsumerRecord
from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy

from tokenhub.contracts.topics import require_consumes
from tokenhub.services.common.kafka import (
    BATCH_RECORDS_MAX,
    FETCH_BYTES_MAX,
    FETCH_WAIT_MS_MAX,
    HEARTBEAT_INTERVAL_MS,
    PARTITION_FETCH_BYTES_MAX,
    SESSION_TIMEOUT_MS,
)
from tokenhub.services.common.metrics import MetricsServer
from tokenhub.services.common.runtime import Runtime

BATCH_WAIT_MS = 100
"""How long a subscriber waits to fill a batch: latency bought for throughput."""

RecordsHandler = Callable[[Runtime, Sequence[ConsumerRecord]], Awaitable[None]]


async def raw_decoder(message: Any) -> Any:
    """Keep the bytes: handlers parse them with the contracts, once."""
    return message.body


async def tolerant_parser(records: tuple[ConsumerRecord, ...], original: Callable[..., Awaitable[Any]]) -> Any:
    """FastStream decodes every header as UTF-8. One record whose header is not
    UTF-8 (or has no value) would fail that parse before the handler runs, and
    NACK_ON_ERROR would rewind onto it forever, so the partition would stop. Only
    then is a readable copy parsed; the handler still gets the records as received
    (metering stores such headers in base64 and rejects the usage with a reason)."""
    try:
        return await original(records)
    except (UnicodeDecodeError, AttributeError):
        readable = tuple(
            dataclasses.replace(record, headers=[(name, (value or b"").decode(errors="replace").encode())
                                                 for name, value in record.headers or ()])
            for record in records
        )
        message = await original(readable)
        message.raw_message = records
        return message


def create_broker(runtime: Runtime) -> KafkaBroker:
    bootstrap_servers, _ = runtime.settings.require_stack()
    # FastStream takes several servers as a list; a comma-separated string would be one host name.
    return KafkaBroker(bootstrap_servers.split(","), client_id=f"tokenhub-{runtime.service}", logger=None,
                       security=runtime.settings.kafka_security().faststream_security())


def batch_subscriber_options(group_id: str) -> dict[str, Any]:
    """What every service's batch subscriber is given, whichever FastStream
    broker it is on: batches of up to BATCH_RECORDS_MAX records as bytes, and
    offsets committed only after the handler succeeded (NACK_ON_ERROR rewinds
    the batch on an error, never skips it). The benchmark's FastStream hops take
    the same (`bench.passthrough`)."""
    return {
        "group_id": group_id,
        "batch": True,
        "max_records": BATCH_RECORDS_MAX,
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        "max_partition_fetch_bytes": PARTITION_FETCH_BYTES_MAX,
        "fetch_max_bytes": FETCH_BYTES_MAX,
        "fetch_max_wait_ms": FETCH_WAIT_MS_MAX,
        "decoder": raw_decoder,
    }


def subscribe(broker: KafkaBroker, runtime: Runtime, topic: str, group_id: str, handler: RecordsHandler) -> None:
    """A batch subscriber (`batch_subscriber_options`) that hands `handler` the
    records as received, with the runtime's bounded retries and dead letters.
    Only a topic the topology declares as the service's input is accepted."""
    require_consumes(runtime.service, topic)

    async def consume(body: list[bytes], message: KafkaMessage) -> None:
        await runtime.process(message.raw_message, lambda records: handler(runtime, records))

    broker.subscriber(topic, batch_timeout_ms=BATCH_WAIT_MS, parser=tolerant_parser,
                      **batch_subscriber_options(group_id))(consume)


def create_app(runtime: Runtime, broker: KafkaBroker) -> FastStream:
    app = FastStream(broker, logger=None)
    metrics = MetricsServer(runtime)
    app.on_startup(runtime.start)
    app.after_startup(metrics.start)
    app.on_shutdown(metrics.stop)
    # After the subscribers and every service's own stop hooks: the pool and the
    # producer outlive the last batch, and the outbox is relayed once more at the end.
    app.after_shutdown(runtime.stop)
    return app
