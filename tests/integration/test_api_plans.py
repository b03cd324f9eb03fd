"""Plans and billing cycles through the API on the real stack: only an admin key
may change them, each change names the key's owner as its actor, what the API
refuses it refuses with invoicing's own one-line reason, and the effect shows
where people look: GET /v1/plans, the CLI's `plan list` to the last digit, and
the payer's draft invoice (the first tier's flat fee, before any usage)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
import pytest_asyncio

from tests.integration.api_support import RunningApi, api  # noqa: F401 - a fixture
from tests.integration.support import World
from tests.integration.test_api import same
from tests.integration.test_invoicing import ZONE, _query
from tests.integration.test_pricing import _publish_book
from tokenhub.api.access import Role, digest, new_key
from tokenhub.api.adapters import store
from tokenhub.client.api import ApiClient, ApiError
from tokenhub.contracts.periods import billing_period, containing
from tokenhub.infra.pipeline import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")
WAIT_S = 60.0
GRADUATED = {"mode": "graduated", "tiers": [
    {"up_to_tokens": 100_000, "unit_price_per_million": "10", "flat_fee": "1"},
    {"up_to_tokens": None, "unit_price_per_million": "5", "flat_fee": "0.5"}]}


class Tiered:
    """Payers with no usage, a model, and a book with period tiers for it (first tier's fee 1)."""

    def __init__(self, api: RunningApi, world: World) -> None:
        self.api, self.world = api, world
        self.model, self.book = f"{world.prefix}-tiered", f"{world.prefix}-tiers"
        self.this_month = containing(datetime.now(UTC), "month", ZONE)
        self.last_month = containing(self.this_month.start - timedelta(hours=1), "month", ZONE)

    async def client(self, role: str, bu: str | None = None, owner: str = "tests") -> ApiClient:
        return ApiClient(self.api.url, await self.api.key(role, bu, owner=owner))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tiered(backend, api: RunningApi) -> Tiered:  # noqa: ANN001, F811
    world = World(backend.settings)
    await world.publish(["payer", "other", "weekly"], extra_models=[{
        "model_id": f"{world.prefix}-tiered", "provider_bu": world.provider, "modality": "text",
        "token_classes": ["input", "output"]}])
    await _publish_book(world, f"{world.prefix}-tiers", 1, datetime.now(UTC) - timedelta(days=60), [{
        "model": f"{world.prefix}-tiered", "unit_prices_per_million": {"input": "0", "output": "0"},
        "period_tiers": GRADUATED}])

    async def invoicing_has_it() -> bool:
        rows = await _query(world, "select count(*) as n from invoicing.price_books where book_id = $1", f"{world.prefix}-tiers")
        return rows[0]["n"] == 1
    await wait_until(invoicing_has_it, WAIT_S, "invoicing to store the tiered book")
    return Tiered(api, world)


def _assignment(tiered: Tiered, payer: str, **changes: object) -> dict[str, object]:
    return {"payer_bu": payer, "book_id": tiered.book, "model": tiered.model, "first_month": tiered.this_month.name,
            "reason": "platform fee agreed", **changes}


async def test_only_an_admin_key_changes_plans_and_cycles(tiered: Tiered) -> None:
    api, payer = tiered.api, tiered.world.bu("other")
    expired_id, expired = new_key()
    revoked_id, revoked = new_key()
    connection = await asyncpg.connect(api.database_url)
    try:
        now = datetime.now(UTC)
        await store.insert_key(connection, expired_id, digest(expired), Role.ADMIN, None, "tests", "expired key",
                               now - timedelta(hours=2), now - timedelta(hours=1))
        await store.insert_key(connection, revoked_id, digest(revoked), Role.ADMIN, None, "tests", "revoked key", now, None)
        await store.revoke_key(connection, revoked_id, now, "tests")
    finally:
        await connection.close()
    refused = {
        "missing": ({}, 401, "missing API key"),
        "wrong": ({"authorization": "Bearer thapi_0000_wrong"}, 401, "unknown API key"),
        "expired admin": ({"authorization": f"Bearer {expired}"}, 401, f"API key {expired_id} expired"),
        "revoked admin": ({"authorization": f"Bearer {revoked}"}, 401, f"API key {revoked_id} was revoked"),
    }
    for role, bu in (("bu-reader", payer), ("finance", None), ("auditor", None)):
        key = await api.key(role, bu)
        refused[role] = ({"authorization": f"Bearer {key}"}, 403, f"a {role} key may not change configuration (admin keys may)")
    changes = (("/v1/plans", _assignment(tiered, payer)),
               ("/v1/plans/end", {"payer_bu": payer, "model": tiered.model, "last_month": tiered.this_month.name,
                                  "reason": "r"}),
               ("/v1/billing-cycles", {"payer_bu": payer, "every": "week", "reason": "r"}))
    async with httpx.AsyncClient(base_url=api.url) as http:
        for name, (headers, status, message) in refused.items():
            for path, body in changes:
                response = await http.post(path, json=body, headers=headers)
                assert (name, path, response.status_code) == (name, path, status), response.text
                assert response.json() == {"error": response.json()["error"]} and message in response.json()["error"]
    # Nothing of it was stored: the payer has no plan and no cycle.
    async with await tiered.client("finance") as finance:
        assert await finance.plans(payer) == [] and await finance.billing_cycles(payer) == []
    # The same requests with an admin key are made.
    async with await tiered.client("admin", owner="ops-admin") as admin:
        made = await admin.assign_plan(payer, tiered.book, tiered.model, tiered.this_month.name, reason="platform fee agreed")
        assert (made["payer_bu"], made["actor"], made["ended_by"]) == (payer, "ops-admin", None)
        cycle = await admin.set_billing_cycle(payer, "month", reason="monthly, as agreed")
        assert (cycle["every"], cycle["actor"], cycle["reason"]) == ("month", "ops-admin", "monthly, as agreed")


async def test_a_plan_assigned_by_an_admin_is_listed_with_its_owner_and_charges_its_fee_on_the_draft(tiered: Tiered) -> None:
    api, world = tiered.api, tiered.world
    payer = world.bu("payer")
    owner = f"finance-lead-{uuid.uuid4().hex[:4]}"
    async with await tiered.client("admin", owner=owner) as admin:
        made = await admin.assign_plan(payer, tiered.book, tiered.model, tiered.this_month.name, reason="platform fee agreed")
    assert {name: made[name] for name in ("payer_bu", "book_id", "model", "provider_bu", "first_month", "last_month",
                                          "actor", "reason", "ended_by", "end_reason", "ended_at")} == {
        "payer_bu": payer, "book_id": tiered.book, "model": tiered.model, "provider_bu": world.provider,
        "first_month": tiered.this_month.name, "last_month": None, "actor": owner, "reason": "platform fee agreed",
        "ended_by": None, "end_reason": None, "ended_at": None}

    # Recorded as the CLI records it, and read back equal to the CLI's listing.
    stored = await _query(world, "select actor, reason from invoicing.plans where payer_bu = $1", payer)
    assert [(row["actor"], row["reason"]) for row in stored] == [(owner, "platform fee agreed")]
    async with await tiered.client("finance") as finance:
        listed = await finance.plans(payer)
        assert listed == [made]
        assert same(listed) == same(api.cli("plan", "list", "--bu", payer, "--json"))

        # Before any usage, the payer's draft carries the first tier's flat fee, exactly.
        drafts = await finance.all("/v1/invoices", payer=payer)
        assert [(draft["period"], draft["status"], [(line["kind"], line["model"], line["tokens"], line["amount"])
                                                    for line in draft["lines"]]) for draft in drafts] == [
            (tiered.this_month.name, "draft", [("period_tier", tiered.model, 0, "1.000000000000")])]
        assert same(drafts) == same(api.cli("invoice", "list", "--bu", payer, "--json"))
    # The payer's reader sees its plan; another unit's reader does not.
    async with await tiered.client("bu-reader", payer) as own, await tiered.client("bu-reader", world.bu("other")) as other:
        assert [row["plan_id"] for row in await own.plans()] == [made["plan_id"]]
        assert payer not in {row["payer_bu"] for row in await other.plans()}

    # What invoicing refuses, the API refuses with its one-line reason.
    async with await tiered.client("admin", owner=owner) as admin:
        for body, status, message in (
                (_assignment(tiered, f"{world.prefix}-nobody"), 422, f"no business unit {world.prefix}-nobody in the registry"),
                (_assignment(tiered, payer, model=f"{world.prefix}-nothing"), 422, f"no model {world.prefix}-nothing in the registry"),
                (_assignment(tiered, payer, book_id=f"{world.prefix}-nobook"), 422, f"no price book {world.prefix}-nobook"),
                (_assignment(tiered, payer, book_id=f"{world.prefix}-book"), 409,
                 f"price book {world.prefix}-book has no period tiers for {tiered.model}"),
                (_assignment(tiered, payer), 409, f"{payer} already has a plan for {tiered.model} from "
                                                  f"{tiered.this_month.name} to open end (book {tiered.book})"),
                (_assignment(tiered, world.bu("weekly"), first_month=tiered.last_month.name), 409,
                 f"{tiered.last_month.name} has ended (at {tiered.last_month.end.isoformat()}): "
                 "a plan starts in the current month or later"),
                (_assignment(tiered, world.bu("weekly"), first_month="2026-13"), 422, "2026-13"),
                (_assignment(tiered, world.bu("weekly"), reason=""), 422, "reason: String should have at least 1 character")):
            with pytest.raises(ApiError) as error:
                await admin.post("/v1/plans", body)
            assert error.value.status == status and message in error.value.message, (body, error.value.message)
            assert "\n" not in error.value.message
        assert len(await admin.plans(payer)) == 1  # none of those was stored

        # Ended by another admin: the plan keeps who assigned it and says who ended it.
        async with await tiered.client("admin", owner="contracts-desk") as desk:
            ended = await desk.end_plan(payer, tiered.model, tiered.this_month.name, reason="contract ends")
        assert (ended["plan_id"], ended["last_month"], ended["actor"], ended["ended_by"], ended["end_reason"]) == (
            made["plan_id"], tiered.this_month.name, owner, "contracts-desk", "contract ends")
        assert await admin.plans(payer) == [ended]
        assert same(await admin.plans(payer)) == same(api.cli("plan", "list", "--bu", payer, "--json"))
        for body, message in (
                ({"payer_bu": payer, "model": tiered.model, "last_month": tiered.last_month.name, "reason": "oops"},
                 "has ended: periods already billed under the plan stay billed"),
                ({"payer_bu": world.bu("weekly"), "model": tiered.model, "last_month": tiered.this_month.name, "reason": "r"},
                 f"{world.bu('weekly')} has no plan for {tiered.model} running in {tiered.this_month.name} or later")):
            with pytest.raises(ApiError) as error:
                await admin.post("/v1/plans/end", body)
            assert error.value.status == 409 and message in error.value.message, error.value.message


async def test_a_billing_cycle_set_by_an_admin_names_its_owner_and_decides_the_draft_period(tiered: Tiered) -> None:
    world, payer = tiered.world, tiered.world.bu("weekly")
    async with await tiered.client("admin", owner="billing-admin") as admin:
        with pytest.raises(ApiError) as unknown:
            await admin.set_billing_cycle(f"{world.prefix}-nobody", "week", reason="r")
        assert (unknown.value.status, unknown.value.message) == (422, f"no business unit {world.prefix}-nobody in the registry")
        await admin.assign_plan(payer, tiered.book, tiered.model, tiered.this_month.name, reason="weekly fee")
        cycle = await admin.set_billing_cycle(payer, "week", reason="weekly chargeback")
        assert (cycle["payer_bu"], cycle["every"], cycle["actor"], cycle["reason"]) == (
            payer, "week", "billing-admin", "weekly chargeback")
        assert await admin.billing_cycles(payer) == [cycle]
    stored = await _query(world, "select kind, actor, reason from invoicing.billing_cycles where payer_bu = $1", payer)
    assert [tuple(row) for row in stored] == [("week", "billing-admin", "weekly chargeback")]
    async with await tiered.client("finance") as finance:
        drafts = await finance.all("/v1/invoices", payer=payer)
    week = billing_period(datetime.now(UTC), "week", ZONE)
    assert [(draft["period"], [(line["kind"], line["amount"]) for line in draft["lines"]]) for draft in drafts] == [
        (week.name, [("period_tier", "1.000000000000")])]
    async with await tiered.client("bu-reader", world.bu("other")) as other:
        assert await other.billing_cycles(payer) == []
