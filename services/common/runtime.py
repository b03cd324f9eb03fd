"""What every service process holds: settings, a database pool, a producer,
and the bounded-retry, dead-letter path for batches that keep failing."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, start_http_server

from tokenhub.contracts.topics import DEAD_LETTER
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.common.logging import batch_context, record_context
from tokenhub.services.common.outbox import relay

RELAY_RETRY_S: Final = 1.0
"""How long the background relay waits after the broker or database failed it;
the rows stay in the outbox meanwhile, so waiting loses nothing."""
GC_THRESHOLDS: Final = (50_000, 50, 100)
"""Allocations between young collections, then collections between older ones.
A batch allocates hundreds of thousands of short-lived objects (events, dicts,
Decimals); at Python's default (700, 10, 10) the collector ran hundreds of
times a second and cost 8 % of the per-event CPU (measured on metering's core
and the ledger's decoding). Nearly everything dies young, so fewer collections
free the same memory a little later."""
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

RELAY_TRANSIENT_ERRORS: Final = (*INFRASTRUCTURE_ERRORS, KafkaError)
"""What pauses the relay without losing anything: the rows wait in the outbox."""

log = structlog.get_logger()


def collect_garbage_less_often() -> None:
    """Called once by `tokenhub` for every process it runs: the services (`tokenhub
    run`) and the CLI's replay, verify and benchmark move many events."""
    gc.set_threshold(*GC_THRESHOLDS)


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
    _relay_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _relay_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    _relay_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        bootstrap_servers, database_url = self.settings.require_stack()
        self.pool = await create_pool(database_url)
        self.producer = create_producer(bootstrap_servers, client_id=f"tokenhub-{self.service}", settings=self.settings)
        await self.producer.start()
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port)
        leftover = await self.relay()
        self._relay_task = asyncio.create_task(self._relay_loop(), name=f"{self.service}-relay")
        gc.freeze()  # what start-up built lives as long as the process: no collection need look at it again
        log.info("service_started", service=self.service, outbox_relayed=leftover)

    async def stop(self) -> None:
        for stop in self.extra_stops:
            await stop()
        if self._relay_task is not None:
            self._relay_task.cancel()
            try:
                await self._relay_task
            except asyncio.CancelledError:
                pass
            try:
                await self.relay()  # what the last batches staged; a failure here is relayed at the next start
            except RELAY_TRANSIENT_ERRORS as error:
                log.warning("relay_at_stop_failed", error=repr(error))
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
        """Publish the outbox now. One relay at a time per process, so rows leave
        in their outbox order; other instances skip the rows this one holds."""
        async with self._relay_lock:
            return await relay(self.db(), self.kafka(), self.schema)

    def relay_soon(self) -> None:
        """Ask the background relay to publish what a committed batch staged. The
        consumer goes on to its next batch while the broker acknowledges this one:
        the rows are durable in the outbox, so nothing waits on the broker for safety."""
        self._relay_wanted.set()

    async def _relay_loop(self) -> None:
        while True:
            await self._relay_wanted.wait()
            self._relay_wanted.clear()
            try:
                await self.relay()
            except RELAY_TRANSIENT_ERRORS as error:
                log.warning("relay_paused", error=repr(error), retry_in_s=RELAY_RETRY_S)
                await asyncio.sleep(RELAY_RETRY_S)
                self._relay_wanted.set()
            except Exception:
                log.exception("relay_failed")
                os._exit(1)  # a bug, not the weather: stop so the supervisor restarts us and relays at start

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
        structlog.contextvars.bind_contextvars(**batch_context(self.service, records))
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
                structlog.contextvars.bind_contextvars(**record_context(record))
                try:
                    await handle([record])
                except INFRASTRUCTURE_ERRORS:
                    raise
                except Exception as error:  # noqa: BLE001 - the reason travels with the record
                    await self.dead_letter(record, repr(error)[:1000])
                    RECORDS_DEAD_LETTERED.labels(service=self.service).inc()
        finally:
            structlog.contextvars.clear_contextvars()

