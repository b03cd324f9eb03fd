"""What every service process holds: settings, a database pool, a producer,
its supervised background tasks, and the bounded-retry, dead-letter path for
batches that keep failing. Which failures are the infrastructure's and which are
the work's is decided in `services.common.supervision`, and nowhere else."""

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
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from tokenhub.contracts.topics import DEAD_LETTER
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.common.logging import batch_context, record_context
from tokenhub.services.common.outbox import relay
from tokenhub.services.common.supervision import (
    INFRASTRUCTURE_ERRORS,
    Backoff,
    ExitFunction,
    exit_process,
    is_infrastructure,
    supervise,
)

__all__ = ["INFRASTRUCTURE_ERRORS", "Runtime", "collect_garbage_less_often", "is_infrastructure", "maybe_crash"]

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
INFRASTRUCTURE_PATIENCE_S: Final = 120.0
"""How long a batch waits in place (retrying with backoff) for the database or
broker to come back before the error goes up and the subscriber rewinds and
fetches the batch again. Below the consumer group's poll interval (300 s), so
waiting never costs the partitions."""
STARTUP_PATIENCE_S: Final = 120.0
"""How long a starting service waits for the database and broker (they may be
starting too) before it gives up and exits non-zero for its supervisor."""

log = structlog.get_logger()


def collect_garbage_less_often() -> None:
    """Called once by `tokenhub` for every process it runs: the services (`tokenhub
    run`) and the CLI's replay, verify and benchmark move many events."""
    gc.set_threshold(*GC_THRESHOLDS)


# Every service's own metrics, served on its metrics port (services.common.metrics).
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
    infrastructure_patience_s: float = INFRASTRUCTURE_PATIENCE_S
    startup_patience_s: float = STARTUP_PATIENCE_S
    exit: ExitFunction = exit_process
    """How a failed task ends the process; tests pass a recorder."""
    _relay_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _relay_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Connect to the database and the broker, waiting (with backoff) while
        either is unavailable, then relay what the outbox still holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_patience_s
        backoff = Backoff()
        while True:
            try:
                leftover = await self._connect()
                break
            except Exception as error:
                if not is_infrastructure(error) or loop.time() > deadline:
                    log.critical("service_start_failed", service=self.service, error=repr(error))
                    raise
                delay = backoff.next()
                log.warning("service_start_waiting", service=self.service, error=repr(error), retry_in_s=delay)
                await self._disconnect()
                await asyncio.sleep(delay)
        self.spawn(f"{self.service}-relay", self._relay_forever)
        gc.freeze()  # what start-up built lives as long as the process: no collection need look at it again
        log.info("service_started", service=self.service, outbox_relayed=leftover)

    async def _connect(self) -> int:
        bootstrap_servers, database_url = self.settings.require_stack()
        if self.pool is None:
            self.pool = await create_pool(database_url)
        if self.producer is None:
            producer = create_producer(bootstrap_servers, client_id=f"tokenhub-{self.service}", settings=self.settings)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self.producer = producer
        return await self.relay()

    async def _disconnect(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run a long-running task under supervision (`supervision.supervise`):
        retried while the infrastructure is away, the process ended on any other
        failure. Cancelled at stop."""
        async def run_on_fresh_connections() -> None:
            try:
                await run()
            except Exception as error:
                if is_infrastructure(error):
                    await self.expire_connections()
                raise

        task = asyncio.create_task(supervise(name, run_on_fresh_connections, exit=self.exit), name=name)
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        for stop in self.extra_stops:
            await stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self.producer is not None and self.pool is not None:
            try:
                await self.relay()  # what the last batches staged; a failure here is relayed at the next start
            except Exception as error:
                if not is_infrastructure(error):
                    raise
                log.warning("relay_at_stop_failed", error=repr(error))
        await self._disconnect()
        log.info("service_stopped", service=self.service)

    async def expire_connections(self) -> None:
        """After the database failed a call: every pooled connection is replaced
        at its next use. A connection the server dropped while it sat idle in the
        pool would otherwise fail the first call made on it after a restart, in
        asyncpg's own words ("another operation is in progress")."""
        if self.pool is not None:
            await self.pool.expire_connections()

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

    async def _relay_forever(self) -> None:
        # Relays first: after a pause (the broker or database was away) the rows
        # staged meanwhile wait in the outbox, and nobody may ask again.
        while True:
            await self.relay()
            await self._relay_wanted.wait()
            self._relay_wanted.clear()

    async def patiently(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work`, retrying it in place with backoff while the database or
        broker is unavailable, for up to `infrastructure_patience_s`; then the
        error goes up (the caller rewinds). Other errors go up at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.infrastructure_patience_s
        backoff = Backoff()
        while True:
            try:
                await work()
                return
            except Exception as error:
                if not is_infrastructure(error) or loop.time() >= deadline:
                    raise
                await self.expire_connections()
                delay = min(backoff.next(), max(deadline - loop.time(), 0.0))
                log.warning("batch_paused_infrastructure_unavailable", error=repr(error), retry_in_s=delay)
                await asyncio.sleep(delay)

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
        """Run `handle` on a batch with bounded retries; isolate and dead-letter
        poison records. While the database or broker is unavailable the batch
        waits (`patiently`) and is never counted as failing: healthy records are
        not dead-lettered because PostgreSQL is restarting."""
        structlog.contextvars.bind_contextvars(**batch_context(self.service, records))
        try:
            for attempt in range(RETRIES_MAX):
                try:
                    await self.patiently(lambda: handle(records))
                    RECORDS_PROCESSED.labels(service=self.service).inc(len(records))
                    return
                except Exception as error:
                    if is_infrastructure(error):
                        raise  # patience ran out: the subscriber rewinds and fetches the batch again
                    log.warning("batch_failed", attempt=attempt + 1, error=repr(error))
                    await asyncio.sleep(RETRY_BACKOFF_S[attempt])
            for record in records:
                structlog.contextvars.bind_contextvars(**record_context(record))
                try:
                    await self.patiently(lambda record=record: handle([record]))
                except Exception as error:
                    if is_infrastructure(error):
                        raise
                    # The reason travels with the record.
                    await self.patiently(lambda record=record, error=error: self.dead_letter(record, repr(error)[:1000]))
                    RECORDS_DEAD_LETTERED.labels(service=self.service).inc()
        finally:
            structlog.contextvars.clear_contextvars()
