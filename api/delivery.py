"""Webhook deliveries: stored once per event and subscription, sent signed,
tried again with backoff, every attempt recorded with its outcome."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
import httpx
import structlog
from prometheus_client import Counter

from tokenhub.api import webhooks
from tokenhub.api.adapters import store

SEND_TIMEOUT_S: Final = 10.0
"""A receiver that has not answered in ten seconds is counted as down for this attempt."""
LEASE_S: Final = 3 * SEND_TIMEOUT_S
SEND_BATCH_MAX: Final = 50
"""Deliveries sent at once by one instance; the rest wait for the next round."""
IDLE_CHECK_S: Final = 0.5
SUBSCRIPTIONS_REFRESH_S: Final = 2.0
ERROR_TEXT_MAX: Final = 500

DELIVERIES = Counter("tokenhub_api_webhook_deliveries", "Webhook delivery attempts", ["outcome"])
log = structlog.get_logger()


class Dispatcher:
    def __init__(self, writer: asyncpg.Pool, backoff_s: tuple[float, ...] = webhooks.BACKOFF_S) -> None:
        self.writer = writer
        self.backoff_s = backoff_s
        self.wake = asyncio.Event()
        self._subscriptions: list[webhooks.Subscription] = []
        self._subscriptions_read = 0.0
        self.client = httpx.AsyncClient(timeout=SEND_TIMEOUT_S, follow_redirects=False)

    async def close(self) -> None:
        await self.client.aclose()

    def subscriptions_changed(self) -> None:
        self._subscriptions_read = 0.0

    async def subscriptions(self) -> list[webhooks.Subscription]:
        if time.monotonic() - self._subscriptions_read > SUBSCRIPTIONS_REFRESH_S:
            async with self.writer.acquire() as connection:
                self._subscriptions = await store.active_subscriptions(connection)
            self._subscriptions_read = time.monotonic()
        return self._subscriptions

    async def accept(self, notices: list[webhooks.Notice]) -> None:
        """Store a delivery per matching subscription (once per event), then wake the sender."""
        if not notices:
            return
        self.subscriptions_changed()  # a subscription made a moment ago hears of this batch
        matched = webhooks.deliveries(await self.subscriptions(), notices)
        rows = [(webhooks.delivery_id(subscription.webhook_id, notice.event_id), subscription.webhook_id, notice.event_id,
                 notice.kind, body) for subscription, notice, body in matched]
        async with self.writer.acquire() as connection:
            claimed = await store.claim_deliveries(connection, rows, datetime.now(UTC))
        if claimed:
            log.info("webhook_deliveries_stored", deliveries=len(claimed), notices=len(notices))
            self.wake.set()

    async def run(self) -> None:
        while True:
            sent = await self.send_due()
            if sent:
                continue
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=IDLE_CHECK_S)
            except TimeoutError:
                pass

    async def send_due(self) -> int:
        now = datetime.now(UTC)
        async with self.writer.acquire() as connection:
            due = await store.lease_due(connection, now, SEND_BATCH_MAX, now + timedelta(seconds=LEASE_S))
        if due:
            await asyncio.gather(*(self._send(delivery) for delivery in due))
        return len(due)

    async def _send(self, delivery: store.DueDelivery) -> None:
        attempt = delivery.attempts + 1
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            webhooks.SIGNATURE_HEADER: webhooks.sign(delivery.secret, timestamp, delivery.body),
            webhooks.EVENT_ID_HEADER: delivery.event_id,
            webhooks.EVENT_TYPE_HEADER: delivery.kind,
            webhooks.DELIVERY_ID_HEADER: str(delivery.delivery_id),
            "user-agent": "tokenhub-webhooks/1",
        }
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            response = await self.client.post(delivery.url, content=delivery.body, headers=headers)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}: {response.text[:ERROR_TEXT_MAX]}"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {str(failure)[:ERROR_TEXT_MAX]}"
        duration_ms = (time.perf_counter() - started) * 1000
        at = datetime.now(UTC)
        if error is None:
            status, next_at = "delivered", None
        else:
            next_at = webhooks.next_attempt(attempt, at, self.backoff_s)
            status = "pending" if next_at is not None else "failed"
        async with self.writer.acquire() as connection, connection.transaction():
            await store.record_attempt(connection, delivery, attempt, at, status_code, error, duration_ms, status, next_at)
        DELIVERIES.labels(outcome=status).inc()
        log.info("webhook_attempt", delivery_id=str(delivery.delivery_id), webhook_id=str(delivery.webhook_id),
                 event_id=delivery.event_id, kind=delivery.kind, attempt=attempt, status=status, status_code=status_code,
                 error=error, duration_ms=round(duration_ms, 1))
