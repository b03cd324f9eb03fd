"""The quota check's fast path answers exactly as the documented route does:
the same request, once taken by each, gets the same status and bytes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from tokenhub.api.access import KeyRecord, Role, digest
from tokenhub.api.app import create_app
from tokenhub.api.hub import Hub
from tokenhub.api.quota import PostedFigures
from tokenhub.api.settings import ApiSettings
from tokenhub.contracts.budgets import BudgetSet
from tokenhub.infra.settings import Settings

NOW = datetime(2026, 3, 14, 4, tzinfo=UTC)
FINANCE = "thapi_finance_secret"
SHOP = "thapi_shop_secret"


@pytest.fixture
def client() -> httpx.AsyncClient:
    settings = Settings(bootstrap_servers="127.0.0.1:1", database_url="postgresql://nobody@/none", now=NOW)
    app = create_app(settings, ApiSettings())
    hub = Hub(settings, ApiSettings())  # not started: key ring and quota state are filled by hand
    hub.keys.update([KeyRecord("finance", digest(FINANCE), Role.FINANCE, None, "f", None, None),
                     KeyRecord("shop", digest(SHOP), Role.BU_READER, "shop", "s", None, None)])
    for payer, consumer, hard_limit in (("shop", None, "10"), ("shop", "maps", "2"), ("maps", None, "1")):
        hub.quota.apply_budgets([BudgetSet(
            id=uuid.uuid4(), event_time=NOW, cause_id="t", payer_bu=payer, consumer_bu=consumer, period_from="2026-03",
            amount=Decimal(hard_limit), hard_limit=Decimal(hard_limit), currency="CNY", actor="t", reason="t", set_at=NOW)])
    hub.quota.apply_posted([PostedFigures("shop", 1, "shop", "maps", "2.5", "2026-03-10T00:00:00Z", "nav"),
                            PostedFigures("maps", 1, "maps", "maps", "0.25", "2026-03-10T00:00:00Z", None)])
    hub.quota_follower.caught_up.set()
    app.state.hub = hub
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


@pytest.mark.parametrize(("key", "path"), [
    (FINANCE, "/v1/quota/shop"), (FINANCE, "/v1/quota/shop?consumer=maps&app=nav"), (FINANCE, "/v1/quota/maps?consumer=maps"),
    (SHOP, "/v1/quota/shop?consumer=maps"), (SHOP, "/v1/quota/maps?consumer=shop"), (SHOP, "/v1/quota/maps"),
    ("thapi_nobody_x", "/v1/quota/shop"), (None, "/v1/quota/shop"), (FINANCE, "/v1/quota/Not_A_Slug"),
    (FINANCE, "/v1/quota/shop?consumer=a--b"), (FINANCE, "/v1/quota/new-payer?app=" + "x" * 129),
])
async def test_the_fast_path_and_the_route_answer_alike(client: httpx.AsyncClient, key: str | None, path: str) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    fast = await client.get(path, headers=headers)
    # An extra parameter the fast path does not know sends the request on to the route, which ignores it.
    routed = await client.get(path + ("&" if "?" in path else "?") + "unused=1", headers=headers)
    assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"


async def test_the_fast_path_gives_the_documented_figures(client: httpx.AsyncClient) -> None:
    answer = (await client.get("/v1/quota/shop?consumer=maps&app=nav", headers={"authorization": f"Bearer {FINANCE}"})).json()
    assert (answer["status"], answer["spent"], answer["limit"], answer["remaining"], answer["app_spent"]) == (
        "exhausted", "2.500000000000", "2.000000000000", "0.000000000000", "2.500000000000")
    assert [(scope["scope"], scope["exhausted"]) for scope in answer["scopes"]] == [("*", False), ("maps", True)]
    as_consumer = (await client.get("/v1/quota/maps?consumer=shop", headers={"authorization": f"Bearer {SHOP}"})).json()
    assert (as_consumer["allowed"], as_consumer["scopes"], as_consumer["spent"]) == (True, [], None)  # maps' figures hidden
