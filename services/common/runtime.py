"""What every service process holds: settings, a database pool, a producer,
and the bounded-retry, dead-letter path for batches that keep failing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, start_http_server

from tokenhub.contracts.topics import DEAD_LETTER
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.common.outbox import relay

RETRIES_MAX: Final = 3
RETRY_BACKOFF_S: Final = (0.2, 1.0, 3.0)
"""Bounded retries of a failing batch before the records are tried one by one
and the ones that still fail are dead-lettered with their reason."""

# Failures of the infrastructure itself are not poison: the batch is rewound
# and retried until the database or broker is back, never dead-lettered.
INFRASTRUCTURE_ERRORS: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)

log = structlog.get_logger()

# Every service's own metrics; metering serves them on its HTTP port, the others
# on TOKENHUB_METRICS_PORT when it is set.
RECORDS_PROCESSED = Counter("tokenhub_records_processed", "Records handled", ["service"])
RECORDS_DEAD_LETTERED = Counter("tokenhub_records_dead_lettered", "Records dead-lettered after bounded retries", ["service"])


def maybe_crash(settings: Settings, point: str) -> None:
    """Test-only fault injection: `TOKENHUB_FAULT_POINT=point` or `point:N` kills
    this process with SIGKILL at the N-th time it passes `point`."""
    if not settings.fault_point:
        return
    name, _, count = settings.fault_point.partition(":")
    if name != point:
        return
    _FAULT_PASSES[point] = _FAULT_PASSES.get(point, 0) + 1
    if _FAULT_PASSES[point] >= int(count or 1):
        log.warning("fault_injected", point=point)
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_PASSES: dict[str, int] = {}


@dataclass
class Runtime:
    settings: Settings
    service: str
    schema: str
    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None
    extra_stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        bootstrap_servers, database_url = self.settings.require_stack()
        self.pool = await create_pool(database_url)
        self.producer = create_producer(bootstrap_servers, client_id=f"tokenhub-{self.service}")
        await self.producer.start()
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port)
        leftover = await self.relay()
        log.info("service_started", service=self.service, outbox_relayed=leftover)

    async def stop(self) -> None:
        for stop in self.extra_stops:
            await stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        log.info("service_stopped", service=self.service)

    def now(self):  # noqa: ANN201 - datetime
        return clock(self.settings)

    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError(f"{self.service} is not started")
        return self.pool

    def kafka(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError(f"{self.service} is not started")
        return self.producer

    async def relay(self) -> int:
        return await relay(self.db(), self.kafka(), self.schema)

    async def dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        detail = {
            "service": self.service,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason,
            "dead_lettered_at": self.now().isoformat(),
        }
        headers = [(f"tokenhub_{name}", str(value).encode()) for name, value in detail.items()]
        headers.extend(record.headers or ())
        future = await self.kafka().send(DEAD_LETTER.name, record.value, key=record.key, headers=headers)
        await future
        log.error("dead_lettered", **detail, value_bytes=len(record.value or b""))
        if self.pool is not None:
            async with self.pool.acquire() as connection:
                await connection.execute(
                    f"insert into {self.schema}.counters (name, value) values ('dead_lettered', 1) "
                    "on conflict (name) do update set value = counters.value + 1"
                )

    async def process(self, records: Sequence[ConsumerRecord], handle: Callable[[Sequence[ConsumerRecord]], Awaitable[None]]) -> None:
        """Run `handle` on a batch with bounded retries; isolate and dead-letter poison records."""
        structlog.contextvars.bind_contextvars(service=self.service, batch_size=len(records))
        try:
            for attempt in range(RETRIES_MAX):
                try:
                    await handle(records)
                    RECORDS_PROCESSED.labels(service=self.service).inc(len(records))
                    return
                except INFRASTRUCTURE_ERRORS:
                    raise
                except Exception as error:  # noqa: BLE001 - retried, then dead-lettered below
                    log.warning("batch_failed", attempt=attempt + 1, error=repr(error))
                    await asyncio.sleep(RETRY_BACKOFF_S[attempt])
            for record in records:
                try:
                    await handle([record])
                except INFRASTRUCTURE_ERRORS:
                    raise
                except Exception as error:  # noqa: BLE001 - the reason travels with the record
                    await self.dead_letter(record, repr(error)[:1000])
                    RECORDS_DEAD_LETTERED.labels(service=self.service).inc()
        finally:
            structlog.contextvars.clear_contextvars()

