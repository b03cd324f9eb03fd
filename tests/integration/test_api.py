"""The HTTP API on the real stack: keys refused for every reason, figures equal
to the CLI's to the last digit, changes published with the key's owner as the
actor, quota state following the topics, docs served without a CDN, and a
business unit's reader that never sees another unit's figures."""

from __future__ import annotations

import csv as csv_module
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.api_support import RunningApi, api  # noqa: F401 - a fixture
from tests.integration.support import World, emit, read_counters, wait_settled
from tokenhub.api.adapters import store
from tokenhub.api.access import Role, digest, new_key
from tokenhub.client.api import ApiClient, ApiError
from tokenhub.contracts.periods import containing
from tokenhub.infra.pipeline import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")
ZONE = "Asia/Shanghai"
WAIT_S = 60.0


class Scene:
    """Two consumers of one provider, each paying for itself: `shop` and `maps`
    must never see each other's figures."""

    def __init__(self, api: RunningApi, world: World) -> None:
        self.api = api
        self.world = world
        self.shop, self.maps, self.provider = world.bu("shop"), world.bu("maps"), world.provider
        self.month = containing(datetime.now(UTC), "month", ZONE)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scene(backend, api: RunningApi) -> Scene:  # noqa: ANN001, F811
    world = World(backend.settings)
    await world.publish(["shop", "maps"])
    before = await read_counters(backend.settings)
    now = datetime.now(UTC)
    events = [world.usage("shop", index, 120_000 + index, 3_000 + index, time=now - timedelta(minutes=30 - index), app="chat")
              for index in range(6)]
    events += [world.usage("maps", 100 + index, 50_000, 7_000, time=now - timedelta(minutes=20 - index), app="nav")
               for index in range(4)]
    await emit(backend.settings, events)
    await wait_settled(backend.settings, before, len(events))
    return Scene(api, world)


def client(scene: Scene, key: str | None) -> ApiClient:
    return ApiClient(scene.api.url, key)


# --- keys -------------------------------------------------------------------------------

async def test_keys_are_refused_when_missing_wrong_expired_revoked_or_out_of_scope(scene: Scene) -> None:
    import asyncpg

    api = scene.api
    expired_id, expired = new_key()
    revoked_id, revoked = new_key()
    connection = await asyncpg.connect(api.database_url)
    try:
        now = datetime.now(UTC)
        await store.insert_key(connection, expired_id, digest(expired), Role.FINANCE, None, "tests", "expired key",
                               now - timedelta(hours=2), now - timedelta(hours=1))
        await store.insert_key(connection, revoked_id, digest(revoked), Role.FINANCE, None, "tests", "revoked key", now, None)
        await store.revoke_key(connection, revoked_id, now, "tests")
    finally:
        await connection.close()
    shop_key = await api.key("bu-reader", scene.shop)
    async with httpx.AsyncClient(base_url=api.url) as http:
        cases = {
            "missing": ({}, 401, "missing API key"),
            "not bearer": ({"authorization": f"Basic {shop_key}"}, 401, "missing API key"),
            "wrong": ({"authorization": "Bearer thapi_0000_wrong"}, 401, "unknown API key"),
            "expired": ({"authorization": f"Bearer {expired}"}, 401, f"API key {expired_id} expired"),
            "revoked": ({"authorization": f"Bearer {revoked}"}, 401, f"API key {revoked_id} was revoked"),
            "out of scope": ({"authorization": f"Bearer {shop_key}"}, 403, f"reads for {scene.shop} only"),
        }
        for name, (headers, status, message) in cases.items():
            for path in (f"/v1/balances/{scene.maps}", f"/v1/quota/{scene.maps}"):
                response = await http.get(path, headers=headers)
                assert (response.status_code, name) == (status, name), response.text
                assert message in response.json()["error"], (name, response.json())
                if status == 401:
                    assert response.headers["www-authenticate"] == "Bearer"
        # A key revoked while the API runs is refused within the key ring's refresh.
        key = await api.key("finance", owner=f"revoke-{uuid.uuid4().hex[:6]}")
        assert (await http.get("/v1/me", headers={"authorization": f"Bearer {key}"})).json()["role"] == "finance"
        connection = await asyncpg.connect(api.database_url)
        try:
            key_id = key.split("_")[1]
            assert await store.revoke_key(connection, key_id, datetime.now(UTC), "tests")
        finally:
            await connection.close()

        async def refused() -> bool:
            return (await http.get("/v1/me", headers={"authorization": f"Bearer {key}"})).status_code == 401
        await wait_until(refused, 10, "the revoked key to be refused")


async def test_roles_decide_who_may_audit_and_change(scene: Scene) -> None:
    api = scene.api
    body = {"payer_bu": scene.shop, "amount": "100", "reason": "tests"}
    for role, bu, may_change, may_audit in (("bu-reader", scene.shop, False, False), ("finance", None, False, False),
                                            ("auditor", None, False, True)):
        async with client(scene, await api.key(role, bu)) as http:
            with pytest.raises(ApiError) as refused:
                await http.post("/v1/budgets", body)
            assert refused.value.status == 403 and "admin keys may" in refused.value.message
            if not may_audit:
                with pytest.raises(ApiError) as refused:
                    await http.post("/v1/audit/verify", {})
                assert refused.value.status == 403


CLI_ONLY = {"price_source"}
"""What the CLI adds to the API's documents: which book version and tier priced an invoice line."""
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def same(value: Any) -> Any:
    """A document as figures: the API and the CLI write the same amounts, Token
    counts and times, each in its own documented form (the CLI's: strings, and
    RFC 3339 in UTC to the microsecond)."""
    if isinstance(value, dict):
        return {name: same(item) for name, item in value.items() if name not in CLI_ONLY}
    if isinstance(value, list):
        return [same(item) for item in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return Decimal(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        return moment if moment.tzinfo else value
    return value


# --- figures equal the CLI's ----------------------------------------------------------------

async def test_balances_statements_spend_and_invoices_equal_the_cli_to_the_last_digit(scene: Scene) -> None:
    api = scene.api
    async with client(scene, await api.key("finance")) as finance:
        balances = {row["bu"]: row for row in await finance.all("/v1/balances")}
        cli_balances = {row["bu"]: row for row in api.cli("balance", "--json")}
        for bu in (scene.shop, scene.maps, scene.provider):
            assert same(balances[bu]) == same(cli_balances[bu])
        shop_spend = Decimal(balances[scene.shop]["spend"])
        assert shop_spend == sum((scene.world.expected_amount(120_000 + index, 3_000 + index) for index in range(6)), Decimal(0))
        assert Decimal(balances[scene.provider]["revenue"]) == shop_spend + Decimal(balances[scene.maps]["spend"])

        as_of = (datetime.now(UTC) - timedelta(minutes=27)).isoformat()
        past = await finance.balance(scene.shop, as_of=as_of)
        assert same(past) == same(next(row for row in api.cli("balance", "--bu", scene.shop, "--as-of", as_of, "--json")))
        assert Decimal(past["spend"]) == sum((scene.world.expected_amount(120_000 + index, 3_000 + index) for index in range(4)),
                                             Decimal(0))

        spend = await finance.spend(scene.shop, scene.month.name)
        cli_spend = api.cli("spend", "--bu", scene.shop, "--period", scene.month.name, "--json")
        assert same(spend["spend"]) == same(cli_spend["spend"])
        assert same([{name: line[name] for name in ("consumer_bu", "app", "model", "token_class", "tokens", "amount", "overage")}
                     for line in spend["lines"]]) == same(cli_spend["lines"])
        assert {line["modality"] for line in spend["lines"]} == {"text"}
        assert Decimal(spend["forecast_month_end"]) >= Decimal(spend["spend"]) > 0
        daily = await finance.get(f"/v1/spend/{scene.shop}/daily", period=scene.month.name)
        assert sum((Decimal(day["spend"]) for day in daily["days"]), Decimal(0)) == Decimal(spend["spend"])
        assert daily["previous_days"] == [] and daily["previous_period"] < scene.month.name
        assert spend["by"]["class"] == [{"key": "input", "tokens": sum(120_000 + index for index in range(6)),
                                         "amount": next(line["amount"] for line in spend["lines"] if line["token_class"] == "input")},
                                        {"key": "output", "tokens": sum(3_000 + index for index in range(6)),
                                         "amount": next(line["amount"] for line in spend["lines"] if line["token_class"] == "output")}]

        start, end = scene.month.start.isoformat(), scene.month.end.isoformat()
        pages, cursor = [], None
        while True:  # two entries a page: the cursor walks the whole statement
            page = await finance.get(f"/v1/statements/{scene.shop}", **{"from": start, "to": end, "limit": 2, "cursor": cursor})
            pages.append(page)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        cli_statement = api.cli("statement", "--bu", scene.shop, "--from", start, "--to", end, "--json")
        assert same([entry for page in pages for entry in page["entries"]]) == same(cli_statement["entries"])
        assert len(pages) == 3 and same([pages[0]["opening"], pages[0]["closing"]]) == same(
            [cli_statement["opening"], cli_statement["closing"]])

        invoices = await finance.all("/v1/invoices", payer=scene.shop)
        cli_invoices = api.cli("invoice", "list", "--bu", scene.shop, "--json")
        assert same(invoices) == same(cli_invoices) and invoices and invoices[0]["status"] == "draft"
        invoice_id = invoices[0]["invoice_id"]
        assert same(await finance.invoice(invoice_id)) == same(cli_invoices[0])
        csv = await finance.invoice(invoice_id, "csv")
        header, *rows = list(csv_module.reader(io.StringIO(csv)))
        assert {len(row) for row in rows} == {len(header)}  # every row as wide as the header
        assert dict(zip(header, rows[-1], strict=True))["kind"] == "total"
        assert dict(zip(header, rows[-1], strict=True))["amount"] == cli_invoices[0]["total"]
        html = await finance.invoice(invoice_id, "html")
        assert f"Invoice {scene.shop}-" in html and "Shop" in html
        # One rendering for both: the API's CSV and HTML are the CLI's, byte for byte (the CLI adds a newline).
        period = invoices[0]["period"]
        assert [invoice["invoice_id"] for invoice in invoices if invoice["period"] == period] == [invoice_id]
        for form, served in (("csv", csv), ("html", html)):
            assert api.cli("invoice", "show", "--bu", scene.shop, "--period", period, "--format", form, text=True) == served + "\n"

        settlement = await finance.settlement(scene.month.name)
        cli_settlement = api.cli("settle", "--period", scene.month.name, "--json")
        assert same(settlement) == same(cli_settlement)


async def test_budgets_set_through_the_api_name_the_key_owner_and_quota_follows_the_ledger(scene: Scene) -> None:
    api = scene.api
    owner = f"finance-lead-{uuid.uuid4().hex[:4]}"
    async with client(scene, await api.key("admin", owner=owner)) as admin:
        published = await admin.post("/v1/budgets", {"payer_bu": scene.maps, "amount": "1.000", "hard_limit": "0.5",
                                                     "reason": "tight month", "thresholds_percent": ["50", "100"]})
        assert published["actor"] == owner and published["topic"] == "budgets.configured"

        async def stored() -> bool:
            return any(row["payer_bu"] == scene.maps for row in await admin.all("/v1/budgets"))
        await wait_until(stored, WAIT_S, "the budget to reach the ledger")
        rows = [row for row in await admin.all("/v1/budgets", payer=scene.maps)]
        cli_rows = [row for row in api.cli("budget", "show", "--bu", scene.maps, "--json")]
        assert same(rows) == same(cli_rows) and rows[0]["actor"] == owner and rows[0]["reason"] == "tight month"

        async def exhausted() -> bool:
            return (await admin.quota(scene.maps))["allowed"] is False
        await wait_until(exhausted, WAIT_S, "quota state to see the hard limit")
        quota = await admin.quota(scene.maps, consumer=scene.maps, app="nav")
        expected = sum((scene.world.expected_amount(50_000, 7_000) for _ in range(4)), Decimal(0))
        assert (quota["status"], Decimal(quota["spent"]), quota["limit"], quota["remaining"]) == (
            "exhausted", expected, "0.500000000000", "0.000000000000")
        assert Decimal(quota["spent"]) == Decimal(rows[0]["spent"]) and Decimal(quota["app_spent"]) == expected
        assert (await admin.quota(scene.shop))["allowed"] is True


async def test_registry_changes_through_the_api_are_published_with_the_owner_as_actor(scene: Scene) -> None:
    api = scene.api
    slug = f"{scene.world.prefix}-newteam"
    owner = f"admin-{uuid.uuid4().hex[:4]}"
    async with client(scene, await api.key("admin", owner=owner)) as admin:
        await admin.post("/v1/registry/business-units", {"bu_id": slug, "display_name": "New Team", "reason": "reorg"})

        async def registered() -> bool:
            return any(row["bu_id"] == slug for row in await admin.all("/v1/registry/business-units"))
        await wait_until(registered, WAIT_S, "metering to register the unit")
        unit = next(row for row in await admin.all("/v1/registry/business-units") if row["bu_id"] == slug)
        assert (unit["display_name"], unit["actor"], unit["reason"]) == ("New Team", owner, "reorg")
        with pytest.raises(ApiError) as invalid:
            await admin.post("/v1/registry/business-units", {"bu_id": "Not A Slug", "display_name": "x", "reason": "r"})
        assert invalid.value.status == 422 and "slug" in invalid.value.message
        # What metering would refuse is refused before it is published, with metering's reason.
        with pytest.raises(ApiError) as unknown:
            await admin.post("/v1/registry/models", {"model_id": f"{slug}-ghost", "provider_bu": f"{slug}-nobody",
                                                     "modality": "text", "token_classes": ["input"], "reason": "r"})
        assert unknown.value.status == 422 and unknown.value.message.startswith(
            f"provider_bu {slug}-nobody is not a registered business unit (")
        assert unknown.value.message.endswith(f"; register it first with `tokenhub bu add {slug}-nobody`")
        with pytest.raises(ApiError) as budget:
            await admin.post("/v1/budgets", {"payer_bu": f"{slug}-nobody", "amount": "100", "reason": "r"})
        assert budget.value.status == 422 and budget.value.message.startswith(
            f"payer_bu {slug}-nobody is not a registered business unit (")


# --- operations and docs ----------------------------------------------------------------------

async def test_health_readiness_metrics_and_docs_without_a_cdn(scene: Scene) -> None:
    async with httpx.AsyncClient(base_url=scene.api.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready == {"status": "ready", "database": True, "broker": True, "quota_state": True, "webhooks": True}
        metrics = (await http.get("/metrics")).text
        assert re.search(r'tokenhub_api_request_seconds_count\{method="GET",route="/v1/balances"\} [1-9]', metrics)
        assert 'route="/v1/quota/{payer}"' in metrics
        docs = (await http.get("/docs")).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', docs) + re.findall(r"url: '([^']+)'", docs)
        assert assets and all(asset.startswith("/") for asset in assets), assets
        for asset in assets:
            assert (await http.get(asset)).status_code == 200, asset
        assert "cdn" not in docs.lower()
        document = (await http.get("/openapi.json")).json()
        assert {"/v1/quota/{payer}", "/v1/balances", "/v1/statements/{bu}", "/v1/webhooks"} <= set(document["paths"])


# --- a business unit's reader sees only its own figures ----------------------------------------

BU_FIELDS = ("bu", "bu_id", "payer_bu", "consumer_bu", "provider_bu", "chain", "from_bu", "to_bu")


def foreign_figures(value: Any, bu: str, units: set[str], owned: bool = False, where: str = "$") -> list[str]:
    """Where a JSON answer holds figures of a business unit other than `bu`: an
    object naming only other units (in its BU fields, or as keys, as positions
    are keyed), unless an enclosing object is `bu`'s own."""
    found: list[str] = []
    if isinstance(value, dict):
        named = {value[field] for field in BU_FIELDS if isinstance(value.get(field), str)} | (set(value) & units)
        if named:
            owned = owned or bu in named
            if not owned or (set(value) & units) - {bu}:
                found.append(f"{where} names {sorted(named)}")
        for name, item in value.items():
            found += foreign_figures(item, bu, units, owned, f"{where}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += foreign_figures(item, bu, units, owned, f"{where}[{index}]")
    return found


def _get_paths(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, item["get"]) for path, item in sorted(document["paths"].items()) if "get" in item]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def walk(scene: Scene) -> dict[str, Any]:
    """What the walk draws from: every GET endpoint and the ids it can name."""
    async with client(scene, await scene.api.key("finance")) as finance:
        document = await finance.get("/openapi.json")
        invoices = [row["invoice_id"] for row in await finance.all("/v1/invoices")
                    if row["payer_bu"] in (scene.shop, scene.maps)]
        rejected = [row["rejected_id"] for row in (await finance.get("/v1/rejected", limit=5))["items"]]
    return {"paths": _get_paths(document), "invoices": invoices, "rejected": rejected}


async def test_a_business_unit_reader_never_gets_another_units_figures(scene: Scene, walk: dict[str, Any]) -> None:
    key = await scene.api.key("bu-reader", scene.shop)
    units = [scene.shop, scene.maps, scene.provider]
    values = {
        "bu": st.sampled_from(units), "payer": st.sampled_from(units), "consumer": st.sampled_from(units),
        "period": st.sampled_from([scene.month.name]), "invoice_id": st.sampled_from(walk["invoices"] or [str(uuid.uuid4())]),
        "rejected_id": st.sampled_from(walk["rejected"] or [str(uuid.uuid4())]), "app": st.sampled_from(["chat", "nav"]),
        "from": st.just(scene.month.start.isoformat()), "to": st.just(scene.month.end.isoformat()),
        "format": st.sampled_from(["json", "csv", "html"]), "limit": st.integers(1, 3),
    }
    calls = []
    for path, operation in walk["paths"]:
        names = [parameter["name"] for parameter in operation.get("parameters", ()) if parameter["name"] in values]
        required = {parameter["name"] for parameter in operation.get("parameters", ()) if parameter.get("required")}
        if required - set(values):
            continue
        calls.append((path, names, required))
    http = httpx.Client(base_url=scene.api.url, headers={"authorization": f"Bearer {key}"}, timeout=30)
    seen_paths: set[str] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def walk_once(data: st.DataObject) -> None:
        path, names, required = data.draw(st.sampled_from(calls))
        chosen = {name: data.draw(values[name]) for name in names if name in required or data.draw(st.booleans())}
        url = path
        for name in re.findall(r"\{(\w+)\}", path):
            url = url.replace(f"{{{name}}}", str(chosen.pop(name)))
        response = http.get(url, params=chosen)
        assert response.status_code in (200, 403, 404), (url, chosen, response.status_code, response.text)
        if response.status_code == 200:
            seen_paths.add(path)
            if path in ("/v1/registry/business-units", "/v1/registry/models"):
                return  # the directory of units and models: names, no figures
            if response.headers["content-type"].startswith("application/json"):
                problems = foreign_figures(response.json(), scene.shop, set(units))
                assert not problems, (url, chosen, problems[:5], response.text[:1500])
            else:
                assert scene.maps not in response.text and scene.provider + ":" not in response.text, (url, chosen)

    import asyncio

    await asyncio.to_thread(walk_once)
    http.close()
    assert {"/v1/balances", "/v1/spend/{payer}", "/v1/statements/{bu}", "/v1/invoices", "/v1/settlements/{period}",
            "/v1/quota/{payer}", "/v1/budgets"} <= seen_paths


async def test_an_auditor_runs_verify_and_replay_over_http_and_finance_reads_the_reports(scene: Scene) -> None:
    api = scene.api
    async with client(scene, await api.key("auditor", owner="auditor-ana")) as auditor:
        runs = {kind: (await auditor.post(f"/v1/audit/{kind}", {"bu": scene.shop}))["id"] for kind in ("verify", "replay")}
    async with client(scene, await api.key("finance")) as finance:
        finished: dict[str, Any] = {}

        async def done() -> bool:
            for kind, run_id in runs.items():
                finished[kind] = await finance.get(f"/v1/audit/runs/{run_id}")
            return all(run["finished_at"] for run in finished.values())
        await wait_until(done, WAIT_S * 2, "verify and replay to finish")
        assert {run_id for run_id in runs.values()} <= {run["run_id"] for run in await finance.all("/v1/audit/runs")}
    verify, replay = finished["verify"], finished["replay"]
    assert (verify["error"], verify["ok"], verify["requested_by"], verify["scope"]) == (None, True, "auditor-ana", scene.shop)
    assert [check["name"] for check in verify["report"]["checks"]] == [
        "chains", "published", "invariant-1", "invariant-2", "invariant-3", "invariant-4", "invariant-5", "invariant-6"]
    assert (replay["error"], replay["ok"], replay["report"]["differences"]) == (None, True, [])
    async with client(scene, await api.key("finance")) as finance:
        balance = await finance.balance(scene.shop)
    assert replay["report"]["balances"][scene.shop]["spend"] == balance["spend"]


async def test_a_price_book_published_through_the_api_is_stored_once_with_its_actor(scene: Scene) -> None:
    api = scene.api
    book_id = f"{scene.world.prefix}-api-book"
    book = {"book_id": book_id, "version": 1, "currency": "CNY",
            "effective_from": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "models": [{"model": scene.world.model, "unit_prices_per_million": {"input": "2.0", "output": "8.0"}}]}
    async with client(scene, await api.key("admin", owner="pricing-lead")) as admin:
        published = await admin.post("/v1/pricebooks", {"book": book, "reason": "next price list"})
        assert (published["topic"], published["actor"]) == ("pricebook.published", "pricing-lead")

        async def stored() -> bool:
            return any(row["book_id"] == book_id for row in await admin.all("/v1/pricebooks"))
        await wait_until(stored, WAIT_S, "pricing to store the book")
        version = await admin.get(f"/v1/pricebooks/{book_id}/versions/1")
        assert (version["actor"], version["reason"], version["models"][0]["unit_prices_per_million"]) == (
            "pricing-lead", "next price list", {"input": "2.000000000000", "output": "8.000000000000"})
        with pytest.raises(ApiError) as again:
            await admin.post("/v1/pricebooks", {"book": book, "reason": "again"})
        assert again.value.status == 409 and "publish version 2 instead" in again.value.message
