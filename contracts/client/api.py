"""A small client for Token Hub's HTTP API, and the check a webhook receiver
runs on a delivery's signature.

    async with ApiClient("http://127.0.0.1:8090", key) as api:
        quota = await api.quota("taobao-tmall", consumer="amap")
        async for row in api.pages("/v1/balances"):
            ...

Answers are the JSON the API documents (amounts as strings: read them with
`decimal.Decimal`, never `float`)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx

SIGNATURE_TOLERANCE_S: Final = 300
"""A delivery signed longer ago than this is refused: a replayed old request."""
TIMEOUT_S: Final = 30.0


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ApiClient:
    def __init__(self, base_url: str, key: str | None, *, timeout_s: float = TIMEOUT_S) -> None:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None) -> httpx.Response:
        query = {name: value for name, value in (params or {}).items() if value is not None}
        response = await self.http.request(method, path, params=query, json=json)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, message)
        return response

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.request("GET", path, params=params)).json()

    async def post(self, path: str, body: Any) -> Any:
        return (await self.request("POST", path, json=body)).json()

    async def pages(self, path: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Every item of a paged list, following the cursors to the end."""
        cursor = None
        while True:
            page = await self.get(path, **params, cursor=cursor)
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return [item async for item in self.pages(path, **params)]

    # The questions people and gateways ask most.

    async def me(self) -> dict[str, Any]:
        return await self.get("/v1/me")

    async def quota(self, payer: str, consumer: str | None = None, app: str | None = None) -> dict[str, Any]:
        return await self.get(f"/v1/quota/{payer}", consumer=consumer, app=app)

    async def balance(self, bu: str, as_of: str | None = None, by: str = "event-time") -> dict[str, Any]:
        return await self.get(f"/v1/balances/{bu}", as_of=as_of, by=by)

    async def spend(self, payer: str, period: str | None = None) -> dict[str, Any]:
        return await self.get(f"/v1/spend/{payer}", period=period)

    async def invoice(self, invoice_id: str, format: str = "json") -> Any:  # noqa: A002 - the API's parameter name
        response = await self.request("GET", f"/v1/invoices/{invoice_id}", params={"format": format})
        return response.json() if format == "json" else response.text

    async def settlement(self, period: str) -> dict[str, Any]:
        return await self.get(f"/v1/settlements/{period}")

    # Plans and billing cycles (admin keys change them; the key's owner is the actor).

    async def plans(self, payer: str | None = None) -> list[dict[str, Any]]:
        return await self.all("/v1/plans", payer=payer)

    async def assign_plan(self, payer: str, book_id: str, model: str, first_month: str, *, reason: str,
                          last_month: str | None = None) -> dict[str, Any]:
        """Put `payer` on the book's period tiers for `model` from `first_month`
        (to `last_month`, or until ended); the plan as stored."""
        return await self.post("/v1/plans", {"payer_bu": payer, "book_id": book_id, "model": model,
                                             "first_month": first_month, "last_month": last_month, "reason": reason})

    async def end_plan(self, payer: str, model: str, last_month: str, *, reason: str) -> dict[str, Any]:
        """End the payer's running plan for `model` with `last_month`; the plan as stored."""
        return await self.post("/v1/plans/end", {"payer_bu": payer, "model": model, "last_month": last_month,
                                                 "reason": reason})

    async def billing_cycles(self, payer: str | None = None) -> list[dict[str, Any]]:
        return await self.all("/v1/billing-cycles", payer=payer)

    async def set_billing_cycle(self, payer: str, every: str, *, reason: str) -> dict[str, Any]:
        """Bill `payer` every `every` (month, week or day) from now on."""
        return await self.post("/v1/billing-cycles", {"payer_bu": payer, "every": every, "reason": reason})


def verify_signature(secret: str, header: str, body: bytes, *, now: float | None = None,
                     tolerance_s: int = SIGNATURE_TOLERANCE_S) -> bool:
    """True when `header` (Tokenhub-Signature: t=...,v1=...) signs `body` with
    `secret` and is recent. Compared in constant time."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
