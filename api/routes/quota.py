"""`GET /v1/quota/{payer}`: may this payer's usage go on? Answered from quota
state in memory; no database per call (the key ring is in memory too)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from tokenhub.api.access import KeyRefused, Principal
from tokenhub.api.models import Quota
from tokenhub.api.quota import QuotaAnswer, ScopeState
from tokenhub.api.web import AUTH_ERRORS, UNAVAILABLE, ApiError, hub_of, principal
from tokenhub.contracts.money import format_amount

SLUG: Final = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
NAME_LENGTH_MAX: Final = 128
RETRY_AFTER_S: Final = "1"

router = APIRouter(tags=["quota"])


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else format_amount(value)


def _scope(state: ScopeState) -> dict[str, object]:
    return {"scope": state.scope, "budget_id": state.budget_id, "budget": _amount(state.budget_amount),
            "hard_limit": _amount(state.hard_limit), "spent": _amount(state.spent), "remaining": _amount(state.remaining),
            "exhausted": state.exhausted}


def quota_body(answer: QuotaAnswer, visible: set[str] | None, applied: int) -> dict[str, object]:
    """The answer as JSON; `visible`: the scopes whose figures this key may see (None: all)."""
    scopes = [state for state in answer.scopes if visible is None or state.scope in visible]
    binding = answer.binding if answer.binding is not None and (visible is None or answer.binding.scope in visible) else None
    return {
        "payer_bu": answer.payer_bu, "consumer_bu": answer.consumer_bu, "app": answer.app, "period": answer.period,
        "allowed": answer.allowed, "status": "allowed" if answer.allowed else "exhausted",
        "spent": _amount(binding.spent) if binding else None, "limit": _amount(binding.hard_limit) if binding else None,
        "remaining": _amount(binding.remaining) if binding else None, "currency": answer.currency,
        "app_spent": _amount(answer.app_spent), "scopes": [_scope(state) for state in scopes], "postings_applied": applied,
    }


@router.get("/v1/quota/{payer}", response_model=Quota, responses={**AUTH_ERRORS, **UNAVAILABLE},
            summary="Allowed or exhausted, with spent, limit and remaining this month")
async def quota(request: Request,
                payer: str = Path(pattern=SLUG, max_length=NAME_LENGTH_MAX),
                consumer: str | None = Query(None, pattern=SLUG, max_length=NAME_LENGTH_MAX, description="the consumer BU the usage is for"),
                app: str | None = Query(None, min_length=1, max_length=NAME_LENGTH_MAX, description="the consumer's app"),
                who: Principal = Depends(principal)) -> Response:
    """A bu-reader key may ask for its own BU as payer, or as consumer (then it
    sees the figures of its own scope; `allowed` still counts every scope)."""
    if not who.sees(payer, consumer):
        raise ApiError(403, f"key {who.key_id} reads for {who.bu} only")
    hub = hub_of(request)
    if not hub.quota_follower.caught_up.is_set():
        raise ApiError(503, "quota state is still reading the topics", {"Retry-After": RETRY_AFTER_S})
    answer = hub.quota.answer(payer, consumer, app, hub.now())
    visible = None if who.sees(payer) else {consumer or ""}
    body = quota_body(answer, visible, hub.quota.applied)
    return Response(orjson.dumps(body), media_type="application/json")


SLUG_PATTERN: Final = re.compile(SLUG)
PREFIX: Final = "/v1/quota/"
JSON_HEADERS: Final = [(b"content-type", b"application/json")]


class QuotaFastPath:
    """The quota check without FastAPI's dependency and validation machinery,
    which costs about ten times the answer itself (measured: ~0.9 ms of CPU a
    request through the route above, ~0.1 ms here). Only the common case is
    answered here: a valid key that may ask, valid parameters, quota state
    caught up. Everything else falls through to the route, which gives the
    documented errors, so both paths answer alike (a test holds them equal)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            body = self._answer(scope)
            if body is not None:
                scope["route_template"] = "/v1/quota/{payer}"
                await send({"type": "http.response.start", "status": 200,
                            "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: dict[str, Any]) -> bytes | None:
        payer = scope["path"][len(PREFIX):]
        if len(payer) > NAME_LENGTH_MAX or not SLUG_PATTERN.fullmatch(payer):
            return None
        consumer = app_name = None
        for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
            if name == "consumer" and consumer is None and len(value) <= NAME_LENGTH_MAX and SLUG_PATTERN.fullmatch(value):
                consumer = value
            elif name == "app" and app_name is None and 1 <= len(value) <= NAME_LENGTH_MAX:
                app_name = value
            else:
                return None  # anything unusual: the route validates and answers
        authorization = next((value for name, value in scope["headers"] if name == b"authorization"), b"").decode("latin-1")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        hub = scope["app"].state.hub
        try:
            who = hub.keys.verify(key.strip(), datetime.now(UTC))
        except KeyRefused:
            return None
        if not who.sees(payer, consumer) or not hub.quota_follower.caught_up.is_set():
            return None
        answer = hub.quota.answer(payer, consumer, app_name, hub.now())
        return orjson.dumps(quota_body(answer, None if who.sees(payer) else {consumer or ""}, hub.quota.applied))
