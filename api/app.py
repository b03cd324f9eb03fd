"""The API's FastAPI app: routes, errors, metrics and the hub's lifespan.
`tokenhub api serve` runs it on uvicorn; `tokenhub up` starts that process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenhub.api.hub import Hub
from tokenhub.api.routes import admin, audit, dashboard, ops, quota, reads, webhooks
from tokenhub.api.settings import ApiSettings
from tokenhub.api.web import ApiError, MetricsMiddleware, RefuseNul, error_response
from tokenhub.infra.settings import Settings

DESCRIPTION: Final = """Token Hub over HTTP: balances, month-to-date spend, statements, invoices,
settlements, budgets, quota checks, rejected and parked usage, price books, plans
and the registry, for people, gateways and tools, each key seeing what its role
allows; and, for admin keys, changes to the registry, budgets, price books, plans
and billing cycles, each recorded with the key's owner as its actor.

Authenticate with `Authorization: Bearer <key>` (`tokenhub apikey create`). Amounts are
strings in plain notation; lists page by cursor in a stable order."""

log = structlog.get_logger()


def create_app(settings: Settings, api_settings: ApiSettings, *, webhook_backoff_s: tuple[float, ...] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = Hub(settings, api_settings, webhook_backoff_s)
        app.state.hub = hub
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    app = FastAPI(title="Token Hub API", version="1", description=DESCRIPTION, lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.mount(ops.DOCS_ASSETS_URL, StaticFiles(directory=ops.DOCS_ASSETS), name="docs-assets")
    for module in (ops, quota, reads, webhooks, admin, audit, dashboard):
        app.include_router(module.router)
    app.add_middleware(RefuseNul)
    app.add_middleware(quota.QuotaFastPath)
    app.add_middleware(MetricsMiddleware)  # added last, so outermost: it times the fast path too

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Any:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Any:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
        return error_response(422, f"{where}: {first['msg']}" if where else str(first["msg"]))

    @app.exception_handler(asyncpg.DataError)
    async def out_of_range(request: Request, error: asyncpg.DataError) -> Any:
        # A value the database cannot hold (a time past year 9999 in a zone, say): the request's fault.
        return error_response(422, f"a parameter is out of range: {str(error).splitlines()[0]}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Any:
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    return app


async def serve(settings: Settings, api_settings: ApiSettings) -> None:
    app = create_app(settings, api_settings)
    config = uvicorn.Config(app, host=api_settings.host, port=api_settings.port, loop="uvloop", http="httptools", access_log=False,
                            log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    log.info("api_serving", host=api_settings.host, port=api_settings.port)
    await server.serve()
