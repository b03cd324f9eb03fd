"""Health, readiness, metrics, who am I, and the interactive docs served from
the installed `fastapi-offline` package's assets (no CDN: they work on an
isolated network)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import fastapi_offline
from fastapi import APIRouter, Depends, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
import orjson
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenhub.api import operations
from tokenhub.api.access import Principal
from tokenhub.api.models import DeadLetterSummary, Health, Me, Readiness, ServiceLags
from tokenhub.api.web import AUTH_ERRORS, UNAVAILABLE, ApiError, hub_of, principal
from tokenhub.contracts.periods import containing
from tokenhub.infra.status import service_lags

DOCS_ASSETS: Final = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL: Final = "/docs-assets"
DEAD_LETTERS_LISTED_MAX: Final = 500

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["operations"], summary="The process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=UNAVAILABLE, tags=["operations"],
            summary="Ready when the database and the broker answer")
async def readyz(request: Request) -> Response:
    hub = hub_of(request)
    database = await hub.database_answers()
    broker = await hub.broker_answers()
    quota = hub.quota_follower.caught_up.is_set()
    webhooks = hub.webhook_follower is not None and hub.webhook_follower.ready.is_set()
    ready = database and broker
    body = Readiness(status="ready" if ready else "not ready", database=database, broker=broker, quota_state=quota,
                     webhooks=webhooks)
    return Response(orjson.dumps(body.model_dump()), status_code=200 if ready else 503, media_type="application/json")


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics, per endpoint",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"}})
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/me", response_model=Me, responses=AUTH_ERRORS, tags=["identity"], summary="The key's role and business unit")
async def me(request: Request, who: Principal = Depends(principal)) -> Me:
    hub = hub_of(request)
    month = containing(hub.now(), "month", hub.settings.timezone)
    return Me(key_id=who.key_id, role=who.role.value, bu=who.bu, owner=who.owner,  # type: ignore[arg-type]
              currency=hub.settings.currency, timezone=hub.settings.timezone, period=month.name,
              period_start=month.start, period_end=month.end)


def _operator(who: Principal) -> None:
    if not who.reads_all:
        raise ApiError(403, f"a {who.role.value} key may not read the operations figures (finance, auditor or admin keys may)")


@router.get("/v1/operations/deadletters", response_model=DeadLetterSummary, responses=AUTH_ERRORS, tags=["operations"],
            summary="Records the services dead-lettered (the deadletter topic): the count by service and the last ones")
async def deadletters(request: Request, limit: int = Query(100, ge=1, le=DEAD_LETTERS_LISTED_MAX),
                      who: Principal = Depends(principal)) -> Response:
    _operator(who)
    found = await operations.dead_letters(hub_of(request).settings, limit)
    return Response(orjson.dumps({"total": found.total, "by_service": found.by_service, "items": found.items}),
                     media_type="application/json")


@router.get("/v1/operations/lag", response_model=ServiceLags, responses=AUTH_ERRORS, tags=["operations"],
            summary="Each service's lag: records on its input topics past its stored offsets, and its outbox backlog")
async def lag(request: Request, who: Principal = Depends(principal)) -> Response:
    _operator(who)
    lags, problems = await service_lags(hub_of(request).settings)
    return Response(orjson.dumps({"services": [{"service": each.service, "records_behind": each.records_behind,
                                                "by_topic": each.by_topic, "outbox_events": each.outbox_events}
                                               for each in lags], "problems": problems}),
                    media_type="application/json")


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title="Token Hub API",
                               swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png")


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=request.app.openapi_url, title="Token Hub API",
                          redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False)
