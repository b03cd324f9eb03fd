"""Final means final, and fees that are due are charged (issue: guardrails),
each case where it was found, with exact figures: closing a period before it
ends needs --early and says what follows; more invoices for a settled month
revise its settlement, published with a revision number, and verify holds the
latest revision to every invoice of the month; a draft number is never shown
twice; a plan charges its first tier's flat fee with or without usage; late
usage for a closed period re-evaluates that period's tier charge."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tokenhub.audit.verify import Check, check_settlements_cover_their_invoices
from tokenhub.audit.log import loads
from tokenhub.contracts.events import Priced, decode
from tokenhub.contracts.periods import containing
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.contracts.topics import SETTLEMENTS_NETTED, TOKENS_PRICED
from tokenhub.infra.pipeline import wait_until
from tests.integration.support import World, emit, published_values, read_counters, wait_settled
from tests.integration.test_invoicing import ZONE, _close, _previous_month_end, _query, _wait_invoicing_has
from tests.integration.test_pricing import (  # noqa: F401 - cli_env is a fixture
    CommandFailed, _balance, _json_output, _publish_book, cli_env, tokenhub)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal
GRADUATED = {"mode": "graduated", "tiers": [
    {"up_to_tokens": 100_000, "unit_price_per_million": "10", "flat_fee": "1"},
    {"up_to_tokens": None, "unit_price_per_million": "5", "flat_fee": "0.5"}]}
VOLUME = {**GRADUATED, "mode": "volume"}


async def _tiered_world(backend, tiers: dict, prices: dict[str, str]) -> World:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop", "idle"], extra_models=[{
        "model_id": f"{world.prefix}-tiered", "provider_bu": world.provider, "modality": "text",
        "token_classes": ["input", "output"]}])
    await _publish_book(world, f"{world.prefix}-tiers", 1, datetime.now(UTC) - timedelta(days=60), [{
        "model": f"{world.prefix}-tiered", "unit_prices_per_million": prices, "period_tiers": tiers}])

    async def invoicing_has_it() -> bool:
        rows = await _query(world, "select count(*) as n from invoicing.price_books where book_id = $1",
                            f"{world.prefix}-tiers")
        return rows[0]["n"] == 1
    await wait_until(invoicing_has_it, 60, "invoicing to store the tiered book")
    return world


async def _spend(world: World, name: str) -> Decimal:
    """The payer's spend as the ledger's projection has it."""
    spend, _, _ = await _balance(world, name)
    return spend


async def test_closing_a_period_before_it_ends_needs_early_and_says_what_follows(
        backend, cli_env: Path) -> None:
    now = datetime.now(UTC)
    today = containing(now, "day", ZONE)
    tomorrow = today.next(ZONE)
    for day in (today, tomorrow):
        with pytest.raises(CommandFailed) as refused:
            await tokenhub("invoice", "close", "--period", day.name, "--actor", "tests")
        message = refused.value.said
        assert message.startswith(f"{day.name} has not ended: it ends at {day.end.isoformat()}, it is now ")
        assert message.endswith("Close it early only on purpose. Pass --early to close it now.")
    closed = await _query(World(backend.settings), "select count(*) as n from invoicing.closed_periods "
                          "where period = $1", tomorrow.name)
    assert closed[0]["n"] == 0  # refused: nothing closed

    out = await tokenhub("invoice", "close", "--period", today.name, "--actor", "tests", "--early")
    assert f"{today.name} was closed before it ends ({today.end.isoformat()}): its invoices are final." in out
    assert f"goes on each payer's next invoice as adjustment lines naming {today.name}" in out


async def test_more_invoices_for_a_settled_month_revise_its_settlement_and_verify_holds_the_latest(
        backend, cli_env: Path) -> None:
    world = World(backend.settings)
    await world.publish(["first", "second"])
    month_end = _previous_month_end()
    month = containing(month_end - timedelta(hours=1), "month", ZONE)
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("first", 1, 100_000, 10_000, time=month_end - timedelta(hours=3))])
    await wait_settled(world.settings, before, 1)
    await _wait_invoicing_has(world, world.bu("first"), 1)
    await _close(world, month.name, world.bu("first"))
    settled = _json_output(await tokenhub("settle", "--period", month.name, "--json"))
    first = D("0.24") + D("0.096")  # 100,000 x 2.4 / 1e6 + 10,000 x 9.6 / 1e6
    cells = {(flow["payer_bu"], flow["provider_bu"]): D(flow["amount"]) for flow in settled["matrix"]}
    assert settled["final"] is True and cells[(world.bu("first"), world.provider)] == first
    assert (world.bu("second"), world.provider) not in cells

    # A payer whose first usage of the settled month arrives late gets its own invoice
    # for the month at the next close, and the month is settled again.
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("second", 2, 50_000, 5_000, time=month_end - timedelta(hours=2))])
    await wait_settled(world.settings, before, 1)
    await _wait_invoicing_has(world, world.bu("second"), 1)
    (invoice,) = await _close(world, month.name, world.bu("second"))
    revised = _json_output(await tokenhub("settle", "--period", month.name, "--json"))
    assert revised["revision"] == settled["revision"] + 1
    assert str(invoice.invoice_id) in revised["invoices"] and set(settled["invoices"]) < set(revised["invoices"])
    cells = {(flow["payer_bu"], flow["provider_bu"]): D(flow["amount"]) for flow in revised["matrix"]}
    assert (cells[(world.bu("first"), world.provider)], cells[(world.bu("second"), world.provider)]) == (
        first, D("0.12") + D("0.048"))
    text = await tokenhub("settle", "--period", month.name)
    assert f"SETTLEMENT {month.name} [settled, revision {revised['revision']}]" in text

    # Published with its revision number, after the one it supersedes.
    published = [decode(SettlementNetted, value) for value in await published_values(
        world.settings.bootstrap_servers or "", SETTLEMENTS_NETTED.name, month.name.encode(), 0,
        until=lambda values: any(decode(SettlementNetted, value).revision == revised["revision"] for value in values))]
    assert [settlement.revision for settlement in published[-2:]] == [settled["revision"], revised["revision"]]
    assert published[-1] == SettlementNetted.model_validate({key: value for key, value in revised.items() if key != "final"})

    # verify holds the month's latest revision to every invoice issued for it: without
    # the revision, the month's settlement no longer covers the late invoice.
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        async def latest() -> dict[str, dict]:
            rows = await connection.fetch("select period, payload from invoicing.settlements order by period, revision")
            return {row["period"]: loads(row["payload"]) for row in rows}

        holds = Check("invariant-5", "")
        await check_settlements_cover_their_invoices(connection, await latest(), ZONE, holds)
        assert [violation for violation in holds.violations if month.name in violation.subject] == []
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute("delete from invoicing.settlements where period = $1 and revision = $2",
                                     month.name, revised["revision"])
            stale = Check("invariant-5", "")
            await check_settlements_cover_their_invoices(connection, await latest(), ZONE, stale)
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    found = [(violation.subject, violation.detail) for violation in stale.violations if month.name in violation.subject]
    assert (f"settlement {month.name} revision {settled['revision']} (the latest)",
            f"does not cover invoice {world.bu('second')}-0001 ({month.name})") in found


async def test_a_draft_number_is_never_shown_twice(backend, cli_env: Path) -> None:
    """A daily payer whose yesterday was invoiced: late usage of yesterday and usage of
    today make one draft, today's, numbered after the invoice, carrying the late usage."""
    world = World(backend.settings)
    await world.publish(["shop"])
    payer = world.bu("shop")
    await tokenhub("billing-cycle", "--bu", payer, "--every", "day", "--actor", "tests", "--reason", "daily billing")
    now = datetime.now(UTC)
    today = containing(now, "day", ZONE)
    yesterday = containing(today.start - timedelta(hours=1), "day", ZONE)
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 1, 1_000, 100, time=yesterday.end - timedelta(hours=2))])
    await wait_settled(world.settings, before, 1)
    await _wait_invoicing_has(world, payer, 1)
    await tokenhub("invoice", "close", "--period", yesterday.name, "--actor", "tests")
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 2, 2_000, 200, time=yesterday.end - timedelta(hours=1)),
                                world.usage("shop", 3, 3_000, 300, time=now - timedelta(minutes=1))])
    await wait_settled(world.settings, before, 2)
    await _wait_invoicing_has(world, payer, 3)
    listed = _json_output(await tokenhub("invoice", "list", "--bu", payer, "--json"))
    assert [(invoice["period"], invoice["number"], invoice["status"]) for invoice in listed] == [
        (yesterday.name, 1, "issued"), (today.name, 2, "draft")]
    draft = listed[1]
    assert [(line["kind"], line["period"], line["tokens"]) for line in draft["lines"]] == [
        ("adjustment", yesterday.name, "2000"), ("adjustment", yesterday.name, "200"),
        ("usage", today.name, "3000"), ("usage", today.name, "300")]
    assert D(draft["subtotal"]) == world.expected_amount(2_000, 200) + world.expected_amount(3_000, 300)


async def test_a_plan_charges_its_first_tier_fee_with_or_without_usage(
        backend, cli_env: Path) -> None:
    world = await _tiered_world(backend, GRADUATED, {"input": "0", "output": "0"})
    model, book = f"{world.prefix}-tiered", f"{world.prefix}-tiers"
    now = datetime.now(UTC)
    this_month = containing(now, "month", ZONE)
    last_month = containing(this_month.start - timedelta(hours=1), "month", ZONE)

    def assign(bu: str, first: str, plan_book: str = book) -> tuple[str, ...]:
        return ("plan", "assign", "--bu", bu, "--book", plan_book, "--model", model, "--from", first,
                "--actor", "finance-ops", "--reason", "platform fee agreed")

    for arguments, refused in (
            (assign(f"{world.prefix}-nobody", this_month.name),
             # The registry's units are listed, or counted when there are many.
             re.escape(f"--bu {world.prefix}-nobody is not a registered business unit ") + r"\([^)]*\)"
             + re.escape(f"; register it first with `tokenhub bu add {world.prefix}-nobody`; no plan is changed")),
            (assign(world.bu("idle"), last_month.name),
             re.escape(f"{last_month.name} has ended (at {last_month.end.isoformat()}): a plan starts in the current "
                       "month or later")),
            (assign(world.bu("idle"), this_month.name, f"{world.prefix}-book"),
             re.escape(f"price book {world.prefix}-book has no period tiers for {model}"))):
        with pytest.raises(CommandFailed) as error:
            await tokenhub(*arguments)
        assert re.fullmatch(refused, error.value.said), str(error.value)
    for name in ("idle", "shop"):
        out = await tokenhub(*assign(world.bu(name), this_month.name))
        assert (f"{world.bu(name)} is on {book}'s period tiers for {model} from {this_month.name} to further notice"
                in out)
    with pytest.raises(CommandFailed, match=f"already has a plan for {model} from {this_month.name}"):
        await tokenhub(*assign(world.bu("idle"), this_month.name))
    listed = _json_output(await tokenhub("plan", "list", "--bu", world.bu("idle"), "--json"))
    assert [(row["model"], row["book_id"], row["provider_bu"], row["first_month"], row["last_month"], row["actor"],
             row["reason"]) for row in listed] == [
        (model, book, world.provider, this_month.name, None, "finance-ops", "platform fee agreed")]

    # Before any usage, the payer's draft shows the fee that is due.
    drafts = _json_output(await tokenhub("invoice", "list", "--bu", world.bu("idle"), "--json"))
    assert [(draft["period"], draft["number"], draft["status"], [(line["kind"], line["amount"]) for line in draft["lines"]])
            for draft in drafts] == [(this_month.name, 1, "draft", [("period_tier", "1.000000000000")])]

    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", index, 40_000, 10_000, model=model, time=now - timedelta(minutes=5))
                                for index in range(3)])  # 150,000 Tokens
    await wait_settled(world.settings, before, 3)
    await _wait_invoicing_has(world, world.bu("shop"), 3)
    (idle,) = await _close(world, this_month.name, world.bu("idle"), early=True)
    (shop,) = await _close(world, this_month.name, world.bu("shop"), early=True)
    # No usage: the first tier's flat fee. 150,000 Tokens, graduated by hand:
    # 100,000 x 10 / 1e6 + 1, then 50,000 x 5 / 1e6 + 0.5.
    assert [(line.kind, line.model, line.tokens, line.amount) for line in idle.lines] == [
        ("period_tier", model, 0, D("1"))]
    assert (idle.postings_count, idle.total) == (0, D("1.00"))
    assert [(line.kind, line.tokens, line.amount) for line in shop.lines if line.kind == "period_tier"] == [
        ("period_tier", 150_000, D("2.75"))]
    assert shop.total == D("2.75")

    async def posted() -> bool:
        return (await _spend(world, "idle"), await _spend(world, "shop")) == (D("1"), D("2.75"))
    await wait_until(posted, 60, "the fees posted to the ledger as adjustments")

    out = await tokenhub("plan", "end", "--bu", world.bu("shop"), "--model", model, "--last", this_month.name,
                         "--actor", "finance-ops", "--reason", "contract ends")
    assert out.strip().endswith(f"{world.bu('shop')}'s plan for {model} ends with {this_month.name}")
    with pytest.raises(CommandFailed, match="has ended: periods already billed under the plan stay billed"):
        await tokenhub("plan", "end", "--bu", world.bu("idle"), "--model", model, "--last", last_month.name,
                       "--actor", "finance-ops", "--reason", "oops")


async def test_late_usage_for_a_closed_period_re_evaluates_its_tier_charge(backend) -> None:
    world = await _tiered_world(backend, VOLUME, {"input": "1", "output": "2"})
    model, payer = f"{world.prefix}-tiered", world.bu("shop")
    month_end = _previous_month_end()
    last_month = containing(month_end - timedelta(hours=1), "month", ZONE)
    this_month = containing(datetime.now(UTC), "month", ZONE)
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 1, 40_000, 10_000, model=model, time=month_end - timedelta(hours=4))])
    await wait_settled(world.settings, before, 1)
    await _wait_invoicing_has(world, payer, 1)
    (first,) = await _close(world, last_month.name, payer)
    # Volume, by hand: all 50,000 at the first tier, 50,000 x 10 / 1e6 + 1.
    assert [(line.period, line.tokens, line.amount) for line in first.lines if line.kind == "period_tier"] == [
        (last_month.name, 50_000, D("1.5"))]

    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 2, 80_000, 20_000, model=model, time=month_end - timedelta(hours=2))])
    await wait_settled(world.settings, before, 1)
    await _wait_invoicing_has(world, payer, 2)
    invoices = await _close(world, this_month.name, payer, early=True)
    assert [invoice.number for invoice in invoices] == [1, 2]
    second = invoices[1]
    # Now 150,000 Tokens for last month, all at the second tier: 150,000 x 5 / 1e6 + 0.5 = 1.25,
    # of which 1.5 was charged: -0.25 on the next invoice, naming last month.
    assert [(line.kind, line.period, line.tokens, line.amount) for line in second.lines] == [
        ("adjustment", last_month.name, 80_000, D("0.08")), ("adjustment", last_month.name, 20_000, D("0.04")),
        ("period_tier", last_month.name, 150_000, D("-0.25"))]
    assert second.total == D("-0.13")

    # On tokens.priced, the re-evaluation is an adjustment the ledger posts.
    values = await published_values(world.settings.bootstrap_servers or "", TOKENS_PRICED.name, payer.encode(), 4)
    adjustments = [decode(Priced, value) for value in values if decode(Priced, value).kind == "adjustment"]
    assert [(priced.invoice_id, priced.total_amount) for priced in adjustments] == [
        (first.invoice_id, D("1.5")), (second.invoice_id, D("-0.25"))]

    async def posted() -> bool:  # 0.04 + 0.02 + 1.5, then 0.08 + 0.04 - 0.25
        return await _spend(world, "shop") == D("1.43")
    await wait_until(posted, 60, "the re-evaluated tier charge posted to the ledger")
