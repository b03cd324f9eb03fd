"""FastAPI glue shared by the routes: errors as one JSON shape, the key check,
the role checks, and Prometheus metrics per endpoint."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import Depends, Request
import orjson
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter, Histogram

from tokenhub.api.access import KeyRefused, Principal
from tokenhub.api.hub import Hub
from tokenhub.api.models import ErrorBody

bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="An API key from `tokenhub apikey create`: Authorization: Bearer thapi_...")

REQUESTS = Counter("tokenhub_api_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("tokenhub_api_request_seconds", "Time to answer an HTTP request", ["method", "route"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
UNMATCHED_ROUTE: Final = "(unmatched)"


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, headers=headers, media_type="application/json")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


AUTH_ERRORS: Final = {401: _error("missing, unknown, expired or revoked API key"),
                      403: _error("the key's role or business unit may not see or do this"),
                      422: _error("a parameter or the body is not valid")}
NOT_FOUND: Final = {404: _error("no such thing, or not one this key may see")}
UNAVAILABLE: Final = {503: _error("not ready yet: try again shortly")}


def hub_of(request: Request) -> Hub:
    return request.app.state.hub


async def principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    hub = hub_of(request)
    key = credentials.credentials if credentials else None
    arrived = time.monotonic()
    try:
        return hub.keys.verify(key, datetime.now(UTC))
    except KeyRefused as refused:
        if key and str(refused) == "unknown API key" and await hub.refresh_keys_on_miss(arrived):
            try:
                return hub.keys.verify(key, datetime.now(UTC))
            except KeyRefused as again:
                refused = again
        raise ApiError(401, str(refused), {"WWW-Authenticate": "Bearer"}) from None


def require_audit(who: Principal = Depends(principal)) -> Principal:
    if not who.may_audit:
        raise ApiError(403, f"a {who.role.value} key may not run verify or replay (auditor or admin keys may)")
    return who


def require_admin(who: Principal = Depends(principal)) -> Principal:
    if not who.may_change:
        raise ApiError(403, f"a {who.role.value} key may not change configuration (admin keys may)")
    return who


def require_sees(who: Principal, *business_units: str | None) -> None:
    if not who.sees(*business_units):
        raise ApiError(403, f"key {who.key_id} reads for {who.bu} only")


class MetricsMiddleware:
    """Counts and times every request by its route template (not its path, so
    one BU's requests do not make a series of their own)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = scope.get("route_template") or getattr(route, "path", UNMATCHED_ROUTE)
            method = scope.get("method", "")
            latency = self._latency.get((method, template))
            if latency is None:  # label look-ups cost more than the observation: once per series
                latency = self._latency[(method, template)] = LATENCY.labels(method, template)
            latency.observe(time.perf_counter() - started)
            counter = self._requests.get((method, template, status[0]))
            if counter is None:
                counter = self._requests[(method, template, status[0])] = REQUESTS.labels(method, template, str(status[0]))
            counter.inc()


class RefuseNul:
    """A NUL character in the path or query is refused with 422: no text column
    can hold one, and no slug, name or time contains one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"%00" in scope["query_string"].lower() or "\x00" in scope["path"]):
            response = error_response(422, "parameters may not contain a NUL character")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
