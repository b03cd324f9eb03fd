"""Webhook subscriptions and their deliveries: subscribe, list, disable, see
every attempt, re-send."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, status

from tokenhub.api import webhooks
from tokenhub.api.access import Principal
from tokenhub.api.adapters import store
from tokenhub.api.models import Accepted, Delivery, DeliveryDetail, Page, Webhook, WebhookCreate, WebhookCreated
from tokenhub.api.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, BadCursor, decode_cursor, encode_cursor
from tokenhub.api.web import AUTH_ERRORS, NOT_FOUND, ApiError, hub_of, principal

router = APIRouter(tags=["webhooks"])
WEBHOOK_FIELDS: Final = ("webhook_id", "url", "kinds", "bu", "owner", "created_at", "disabled_at")


def _webhook(row: dict) -> Webhook:
    return Webhook(**{name: row[name] for name in WEBHOOK_FIELDS})


def _cursor_key(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    try:
        key = decode_cursor(cursor)
        return None if key is None else (datetime.fromisoformat(str(key[0])), uuid.UUID(str(key[1])))
    except (BadCursor, ValueError, IndexError):
        raise ApiError(422, "cursor: not a cursor this API gave") from None


async def _visible_webhook(request: Request, webhook_id: uuid.UUID, who: Principal) -> dict:
    hub = hub_of(request)
    async with hub.writer.acquire() as connection:
        row = await store.get_webhook(connection, webhook_id)
    if row is None or not (who.reads_all or row["bu"] == who.bu):
        raise ApiError(404, f"no webhook {webhook_id}")
    return row


@router.post("/v1/webhooks", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated, responses=AUTH_ERRORS,
             summary="Subscribe a URL to kinds of events; the signing secret is shown once")
async def create(request: Request, body: WebhookCreate, who: Principal = Depends(principal)) -> WebhookCreated:
    if who.bu is not None and body.bu not in (None, who.bu):
        raise ApiError(403, f"key {who.key_id} subscribes for {who.bu} only")
    if str(body.url.scheme) not in ("http", "https"):
        raise ApiError(422, "url: http or https only")
    hub = hub_of(request)
    webhook_id = uuid.uuid4()
    secret = webhooks.new_secret()
    created_at = datetime.now(UTC)
    bu = who.bu if who.bu is not None else body.bu
    async with hub.writer.acquire() as connection:
        if await store.count_owner_webhooks(connection, who.key_id) >= webhooks.WEBHOOKS_PER_OWNER_MAX:
            raise ApiError(403, f"at most {webhooks.WEBHOOKS_PER_OWNER_MAX} active webhooks per key")
        await store.insert_webhook(connection, webhook_id, str(body.url), sorted(set(body.kinds)), bu, secret, who.owner,
                                   who.key_id, created_at)
    hub.dispatcher.subscriptions_changed()
    return WebhookCreated(webhook_id=webhook_id, url=str(body.url), kinds=sorted(set(body.kinds)), bu=bu, owner=who.owner,
                          created_at=created_at, disabled_at=None, secret=secret)


@router.get("/v1/webhooks", response_model=Page[Webhook], responses=AUTH_ERRORS, summary="Webhooks this key may see")
async def list_webhooks(request: Request, cursor: str | None = Query(None, max_length=2000),
                        limit: int = Query(PAGE_SIZE_DEFAULT, ge=1, le=PAGE_SIZE_MAX),
                        who: Principal = Depends(principal)) -> Page[Webhook]:
    after = _cursor_key(cursor)
    async with hub_of(request).writer.acquire() as connection:
        rows = await store.list_webhooks(connection, None if who.reads_all else who.bu, after, limit + 1)
    items = [_webhook(row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page[Webhook](items=items, next_cursor=encode_cursor([items[-1].created_at.isoformat(), str(items[-1].webhook_id)])
                         if more else None)


@router.get("/v1/webhooks/{webhook_id}", response_model=Webhook, responses={**AUTH_ERRORS, **NOT_FOUND}, summary="One webhook")
async def get(request: Request, webhook_id: uuid.UUID = Path(), who: Principal = Depends(principal)) -> Webhook:
    return _webhook(await _visible_webhook(request, webhook_id, who))


@router.delete("/v1/webhooks/{webhook_id}", response_model=Webhook, responses={**AUTH_ERRORS, **NOT_FOUND},
               summary="Stop a webhook; its deliveries stay on record")
async def disable(request: Request, webhook_id: uuid.UUID = Path(), who: Principal = Depends(principal)) -> Webhook:
    await _visible_webhook(request, webhook_id, who)
    hub = hub_of(request)
    async with hub.writer.acquire() as connection:
        await store.disable_webhook(connection, webhook_id, datetime.now(UTC))
        row = await store.get_webhook(connection, webhook_id)
    hub.dispatcher.subscriptions_changed()
    return _webhook(row)


@router.get("/v1/webhooks/{webhook_id}/deliveries", response_model=Page[Delivery], responses={**AUTH_ERRORS, **NOT_FOUND},
            summary="A webhook's deliveries, oldest first, with their outcome")
async def deliveries(request: Request, webhook_id: uuid.UUID = Path(), cursor: str | None = Query(None, max_length=2000),
                     limit: int = Query(PAGE_SIZE_DEFAULT, ge=1, le=PAGE_SIZE_MAX),
                     who: Principal = Depends(principal)) -> Page[Delivery]:
    await _visible_webhook(request, webhook_id, who)
    after = _cursor_key(cursor)
    async with hub_of(request).writer.acquire() as connection:
        rows = await store.list_deliveries(connection, webhook_id, after, limit + 1)
    items = [Delivery(**row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page[Delivery](items=items, next_cursor=encode_cursor([items[-1].created_at.isoformat(), str(items[-1].delivery_id)])
                          if more else None)


async def _delivery(request: Request, webhook_id: uuid.UUID, delivery_id: uuid.UUID, who: Principal) -> dict:
    await _visible_webhook(request, webhook_id, who)
    async with hub_of(request).writer.acquire() as connection:
        row = await store.get_delivery(connection, delivery_id)
    if row is None or row["webhook_id"] != webhook_id:
        raise ApiError(404, f"no delivery {delivery_id} of webhook {webhook_id}")
    return row


@router.get("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}", response_model=DeliveryDetail,
            responses={**AUTH_ERRORS, **NOT_FOUND}, summary="One delivery: its body and every attempt")
async def delivery(request: Request, webhook_id: uuid.UUID = Path(), delivery_id: uuid.UUID = Path(),
                   who: Principal = Depends(principal)) -> DeliveryDetail:
    row = await _delivery(request, webhook_id, delivery_id, who)
    attempts = [{**attempt, "duration_ms": f"{attempt['duration_ms']:f}"} for attempt in row.pop("attempt_log")]
    return DeliveryDetail(**{**row, "body": orjson.loads(row["body"]), "attempt_log": attempts})


@router.post("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend", status_code=status.HTTP_202_ACCEPTED,
             response_model=Accepted, responses={**AUTH_ERRORS, **NOT_FOUND},
             summary="Send a delivery again (the same body, signed anew)")
async def resend(request: Request, webhook_id: uuid.UUID = Path(), delivery_id: uuid.UUID = Path(),
                 who: Principal = Depends(principal)) -> Accepted:
    await _delivery(request, webhook_id, delivery_id, who)
    hub = hub_of(request)
    async with hub.writer.acquire() as connection:
        await store.resend(connection, delivery_id, datetime.now(UTC))
    hub.dispatcher.wake.set()
    return Accepted(status="accepted", id=str(delivery_id))
