"""What the API process holds: two database pools (the read-only role for the
services' schemas, the api role for its own and for invoicing's plans and
billing cycles), the key ring, quota state, the
webhook dispatcher and a producer for admin changes; and the background tasks
that keep them current. One per process, built in `app.lifespan`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaProducer

from tokenhub.api.access import KeyRing, Principal
from tokenhub.api.adapters import store
from tokenhub.api.delivery import Dispatcher
from tokenhub.api.follow import QuotaFollower, WebhookFollower, supervise
from tokenhub.api.quota import QuotaBook
from tokenhub.api.settings import ApiSettings, database_urls
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer

KEY_REFRESH_S: Final = 1.0
"""A key created or revoked elsewhere is known within this long (at once on a miss)."""
KEY_CHANGE_OVERLAP: Final = timedelta(seconds=5)
"""Read back this far before the newest change seen: a transaction that committed
late with an earlier timestamp is not missed."""
READER_POOL_MAX: Final = 6
WRITER_POOL_MAX: Final = 3
READY_TIMEOUT_S: Final = 2.0

log = structlog.get_logger()


class Hub:
    def __init__(self, settings: Settings, api_settings: ApiSettings, webhook_backoff_s: tuple[float, ...] | None = None) -> None:
        self.settings = settings
        self.api_settings = api_settings
        self.bootstrap_servers, self.database_url = settings.require_stack()
        self.reader_url, self.writer_url = database_urls(api_settings, self.database_url)
        self.keys = KeyRing()
        self.quota = QuotaBook(settings.timezone)
        self.quota_follower = QuotaFollower(self.bootstrap_servers, self.quota)
        self.reader: asyncpg.Pool | None = None
        self.writer: asyncpg.Pool | None = None
        self.dispatcher: Dispatcher | None = None
        self.webhook_follower: WebhookFollower | None = None
        self.webhook_backoff_s = webhook_backoff_s
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._keys_seen = datetime(1970, 1, 1, tzinfo=UTC)
        self._keys_lock = asyncio.Lock()
        self._keys_refreshed = 0.0
        self.tasks: list[asyncio.Task[None]] = []
        self.started = time.monotonic()

    def now(self) -> datetime:
        """The clock figures go by (injectable: TOKENHUB_NOW)."""
        return clock(self.settings)

    async def start(self) -> None:
        self.reader = await create_pool(self.reader_url, size_max=READER_POOL_MAX)
        self.writer = await create_pool(self.writer_url, size_max=WRITER_POOL_MAX)
        await self.refresh_keys()
        self.dispatcher = Dispatcher(self.writer, **({"backoff_s": self.webhook_backoff_s} if self.webhook_backoff_s else {}))
        self.webhook_follower = WebhookFollower(self.bootstrap_servers, self.writer, self.dispatcher.accept, self.rejected_consumers)
        for name, body in (("quota-state", self.quota_follower.run), ("webhook-follower", self.webhook_follower.run),
                           ("webhook-sender", self.dispatcher.run), ("key-refresh", self._refresh_keys_forever)):
            self.tasks.append(asyncio.create_task(supervise(name, body), name=f"api-{name}"))
        log.info("api_started", keys=len(self.keys))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self._producer is not None:
            await self._producer.stop()
        for pool in (self.reader, self.writer):
            if pool is not None:
                await pool.close()

    # --- keys -----------------------------------------------------------------------

    async def refresh_keys(self, unless_since: float | None = None) -> None:
        """Read the keys changed since the last look. `unless_since`: skip it if a
        look began after that moment (concurrent misses share one look)."""
        async with self._keys_lock:
            if unless_since is not None and self._keys_refreshed >= unless_since:
                return
            started = time.monotonic()
            assert self.writer is not None
            async with self.writer.acquire() as connection:
                changed = await store.keys_changed_since(connection, self._keys_seen - KEY_CHANGE_OVERLAP)
            self.keys.update([record for record, _ in changed])
            if changed:
                self._keys_seen = max(self._keys_seen, max(at for _, at in changed))
            self._keys_refreshed = started

    async def _refresh_keys_forever(self) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_S)
            await self.refresh_keys()

    async def refresh_keys_on_miss(self, arrived: float) -> bool:
        """A key not in the ring may have been created a moment ago: look, unless
        a look began after the request `arrived` (misses at once share one look,
        so unknown keys cost at most one query in flight)."""
        if self.writer is None:
            return False
        try:
            await self.refresh_keys(unless_since=arrived)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.warning("api_key_refresh_failed", error=repr(error))  # the key stays unknown: 401, not 500
            return False
        return True

    # --- publishing admin changes ----------------------------------------------------

    async def producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                producer = create_producer(self.bootstrap_servers, client_id="tokenhub-api")
                await producer.start()
                self._producer = producer
            return self._producer

    async def publish(self, topic: str, events: list[tuple[bytes, bytes]]) -> None:
        producer = await self.producer()
        futures = [await producer.send(topic, value, key=key) for key, value in events]
        for future in futures:
            await future

    # --- readiness -------------------------------------------------------------------

    async def database_answers(self) -> bool:
        try:
            for pool in (self.reader, self.writer):
                assert pool is not None
                async with asyncio.timeout(READY_TIMEOUT_S), pool.acquire() as connection:
                    await connection.fetchval("select 1")
            return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, AssertionError):
            return False

    async def broker_answers(self) -> bool:
        try:
            producer = await asyncio.wait_for(self.producer(), READY_TIMEOUT_S)
            await asyncio.wait_for(producer.client.fetch_all_metadata(), READY_TIMEOUT_S)
            return True
        except Exception:  # noqa: BLE001 - any failure to reach the broker means not ready
            return False

    # --- lookups for webhooks -----------------------------------------------------------

    async def rejected_consumers(self, rejected_ids: list[str]) -> dict[str, str | None]:
        """The consumer BU each rejected original names, where it can be read."""
        from tokenhub.api import reads

        assert self.reader is not None
        return await reads.rejected_consumers(self.reader, rejected_ids)


def principal_text(principal: Principal) -> dict[str, Any]:
    return {"key_id": principal.key_id, "role": principal.role.value, "bu": principal.bu, "owner": principal.owner}


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)
