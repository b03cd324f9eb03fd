"""Send usage events to Kafka: batched, retried, safe to retry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tokenhub.client.security import PLAINTEXT, KafkaSecurity
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import CLOUDEVENTS_TYPE, UsageData, UsageReported
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.topics import USAGE_REPORTED

SEND_ATTEMPTS_MAX: Final = 5
SEND_BACKOFF_S: Final = 0.5
IN_FLIGHT_MAX: Final = 10_000
"""Sends awaited together: bounds memory while keeping the pipe full."""


def usage_event(source: str, event_id: str | None, time: datetime, data: UsageData | Mapping[str, Any], **extensions: str) -> UsageReported:
    """A CloudEvent for one request. `source` + `event_id` is the idempotency key:
    pass the request's own id where there is one. Without it the id is derived
    from the source, time and measured usage, so a retry of the same report
    carries the same id and is counted once."""
    usage = data if isinstance(data, UsageData) else UsageData.model_validate(data)
    if event_id is None:
        event_id = str(derive_id("client", source, time.isoformat(), canonical_json(usage).decode()))
    return UsageReported(
        specversion="1.0",
        id=event_id,
        source=source,
        type=CLOUDEVENTS_TYPE,
        time=time,
        datacontenttype="application/json",
        data=usage,
        **extensions,
    )


class UsageClient:
    """Async producer of usage events (structured CloudEvents in the value)."""

    def __init__(self, bootstrap_servers: str, *, client_id: str = "tokenhub-client", linger_ms: int = 5,
                 security: KafkaSecurity = PLAINTEXT, idempotent: bool = False) -> None:
        """`security`: how to reach the brokers (SASL/SCRAM and TLS on a secured
        cluster). `idempotent`: on Apache Kafka, a retried send is written once per
        partition; the embedded broker has no idempotent producer, so it stays off
        there, and metering's dedup by `source` + `id` counts a duplicate once."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=linger_ms,
            max_batch_size=512 * 1024,
            **security.aiokafka_options(),
        )
        self._last_offsets: dict[int, int] = {}

    @property
    def last_offsets(self) -> dict[int, int]:
        """Partition of usage.reported -> the offset of the last message this
        client had acknowledged there: metering has read everything sent once its
        committed position passes these."""
        return dict(self._last_offsets)

    async def __aenter__(self) -> UsageClient:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def send_raw(self, values: Iterable[tuple[bytes, bytes]], headers: list[tuple[str, bytes]] | None = None) -> int:
        """Send (key, value) pairs; each is retried until acknowledged or attempts run out."""
        sent = 0
        pending: list[tuple[bytes, bytes, asyncio.Future[Any]]] = []
        for key, value in values:
            pending.append((key, value, await self._enqueue(key, value, headers)))
            if len(pending) >= IN_FLIGHT_MAX:
                sent += await self._settle(pending, headers)
                pending = []
        sent += await self._settle(pending, headers)
        return sent

    async def _enqueue(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> asyncio.Future[Any]:
        """Hand one message to the producer. `send` itself can fail (no metadata while
        the broker is away): that failure is retried like a failed delivery."""
        try:
            return await self._producer.send(USAGE_REPORTED.name, value, key=key, headers=headers)
        except KafkaError as error:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(error)
            return failed

    async def _settle(self, pending: list[tuple[bytes, bytes, asyncio.Future[Any]]], headers: list[tuple[str, bytes]] | None) -> int:
        for key, value, future in pending:
            for attempt in range(1, SEND_ATTEMPTS_MAX + 1):
                try:
                    written = await future
                    self._last_offsets[written.partition] = max(written.offset, self._last_offsets.get(written.partition, -1))
                    break
                except KafkaError:
                    if attempt == SEND_ATTEMPTS_MAX:
                        raise
                    await asyncio.sleep(SEND_BACKOFF_S * attempt)
                    future = await self._enqueue(key, value, headers)
        return len(pending)

    async def report(self, events: Iterable[UsageReported]) -> int:
        return await self.send_raw((event.data.consumer_bu.encode(), canonical_json(event)) for event in events)


class SyncUsageClient:
    """The same client for code without an event loop: a private loop in a thread.
    `report` blocks until every event is acknowledged (acks=all)."""

    def __init__(self, bootstrap_servers: str, **options: Any) -> None:
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tokenhub-client", daemon=True)
        self._thread.start()
        self._client: UsageClient = self._call(self._open(bootstrap_servers, options))

    @staticmethod
    async def _open(bootstrap_servers: str, options: dict[str, Any]) -> UsageClient:
        # aiokafka binds a producer to the loop it is made in: make it on ours.
        return await UsageClient(bootstrap_servers, **options).__aenter__()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def report(self, events: Iterable[UsageReported]) -> int:
        return int(self._call(self._client.report(list(events))))

    def close(self) -> None:
        self._call(self._client.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncUsageClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
