"""Invoicing on the real stack: invoices equal their postings rounded once, late
usage lands on the next invoice while the issued one stays byte for byte, period
tier lines are posted to the ledger, weekly cycles nest in months, and an
outside consumer validates what is published against the exported schemas."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
import pytest

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, Priced, decode
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.money import round_to_minor
from tokenhub.contracts.periods import containing
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.common.outbox import relay
from tokenhub.contracts.topics import INVOICES_ISSUED, LEDGER_POSTED, TOKENS_PRICED
from tokenhub.services.invoicing import handlers, queries
from tokenhub.services.pricing import queries as pricing_queries
from tokenhub.services.invoicing.adapters.produced import produced_records
from tokenhub.services.ledger.domain import GENESIS_HASH, ChainHead, post
from tokenhub.views import invoices as invoice_views
from tests.contract.examples import PRICED
from tests.integration.support import World, delta, emit, publish_events, published_values, read_counters, wait_settled
from tests.integration.test_pricing import _json_output, _publish_book, cli_env, tokenhub  # noqa: F401 - a fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")
ZONE = "Asia/Shanghai"
SERVICE_CLOSE_TIMEOUT_S = 120
"""The service closes after the batch that moves its watermark; on a busy machine that
batch can reach it a minute after the ledger posted it."""


async def _query(world: World, query: str, *parameters):  # noqa: ANN002, ANN202
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        return await connection.fetch(query, *parameters)
    finally:
        await connection.close()


async def _close(world: World, period: str, payer: str, *, early: bool = False) -> list[InvoiceIssued]:
    """Close `period` (the service may already have, at its watermark) and return the payer's invoices."""
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    producer = create_producer(world.settings.bootstrap_servers or "", client_id="tests-close")
    await producer.start()
    try:
        await handlers.close_period(pool, world.settings, period, actor="tests", now=datetime.now(UTC), early=early)
        await relay(pool, producer, handlers.SCHEMA)
    finally:
        await producer.stop()
        await pool.close()
    rows = await _query(world, "select payload from invoicing.invoices where payer_bu = $1 order by number", payer)
    return [decode(InvoiceIssued, row["payload"]) for row in rows]


async def _wait_invoicing_has(world: World, payer: str, count: int) -> None:
    async def arrived() -> bool:
        rows = await _query(world, "select coalesce(sum(postings), 0) as n from invoicing.chain_totals where payer_bu = $1",
                            payer)
        return rows[0]["n"] >= count
    await wait_until(arrived, 60, f"{count} postings of {payer} in invoicing")


def _previous_month_end() -> datetime:
    return containing(datetime.now(UTC), "month", ZONE).start


async def test_late_usage_goes_on_the_next_invoice_and_the_issued_one_never_changes(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    month_end = _previous_month_end()
    last_month = containing(month_end - timedelta(hours=1), "month", ZONE).name
    on_time = [world.usage("shop", index, 10_000 + index, 1_000, time=month_end - timedelta(hours=2, minutes=index))
               for index in range(5)]
    before = await read_counters(world.settings)
    await emit(world.settings, on_time)
    await wait_settled(world.settings, before, 5)
    await _wait_invoicing_has(world, world.bu("shop"), 5)
    issued = await _close(world, last_month, world.bu("shop"))
    assert len(issued) == 1
    first = issued[0]
    assert first.total == round_to_minor(sum((world.expected_amount(10_000 + i, 1_000) for i in range(5)), Decimal(0)))
    assert first.subtotal == sum((world.expected_amount(10_000 + i, 1_000) for i in range(5)), Decimal(0))
    assert first.rounding == first.total - first.subtotal
    # The chain heads it covers are the ledger's: the payer's chain at its fifth entry.
    head = await _query(world, "select chain, sequence, encode(entry_hash, 'hex') as entry_hash from ledger.journal where chain = $1 "
                        "order by sequence desc limit 1", world.bu("shop"))
    assert [(h.chain, h.sequence, h.entry_hash) for h in first.chain_heads] == [
        (head[0]["chain"], 5, head[0]["entry_hash"])]
    stored_before = await _query(world, "select payload from invoicing.invoices where invoice_id = $1",
                                 first.invoice_id)

    late = world.usage("shop", 99, 7_777, 777, time=month_end - timedelta(minutes=1))
    this_month = containing(datetime.now(UTC), "month", ZONE).name
    current = world.usage("shop", 100, 1_000, 100)
    before = await read_counters(world.settings)
    await emit(world.settings, [late, current])
    await wait_settled(world.settings, before, 2)
    await _wait_invoicing_has(world, world.bu("shop"), 7)
    stored_after = await _query(world, "select payload from invoicing.invoices where invoice_id = $1",
                                first.invoice_id)
    assert stored_after == stored_before

    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        async with pool.acquire() as connection:
            draft = await queries.draft_invoice(connection, world.settings, world.bu("shop"),
                                                 containing(datetime.now(UTC), "month", ZONE))
    finally:
        await pool.close()
    assert draft is not None and draft.number == 2 and draft.status == "draft"
    adjustments = [line for line in draft.lines if line.kind == "adjustment"]
    assert [(line.period, line.tokens) for line in adjustments] == [(last_month, 7_777), (last_month, 777)]
    assert draft.period == this_month
    assert draft.subtotal == world.expected_amount(7_777, 777) + world.expected_amount(1_000, 100)


async def test_period_tier_lines_are_posted_and_totals_equal_the_assigned_postings(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"], extra_models=[{"model_id": f"{world.prefix}-tiered", "provider_bu": world.provider,
                                                 "modality": "text", "token_classes": ["input", "output"]}])
    await _publish_book(world, f"{world.prefix}-tiers", 1, datetime.now(UTC) - timedelta(days=60), [{
        "model": f"{world.prefix}-tiered", "unit_prices_per_million": {"input": "0", "output": "0"},
        "period_tiers": {"mode": "graduated", "tiers": [
            {"up_to_tokens": 100_000, "unit_price_per_million": "10", "flat_fee": "1"},
            {"up_to_tokens": None, "unit_price_per_million": "5", "flat_fee": "0.5"}]}}])
    month_end = _previous_month_end()
    last_month = containing(month_end - timedelta(hours=1), "month", ZONE).name
    events = [world.usage("shop", index, 40_000, 10_000, model=f"{world.prefix}-tiered", time=month_end - timedelta(hours=3))
              for index in range(3)]  # 150,000 Tokens
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, 3)
    await _wait_invoicing_has(world, world.bu("shop"), 3)
    (invoice,) = await _close(world, last_month, world.bu("shop"))
    tier_lines = [line for line in invoice.lines if line.kind == "period_tier"]
    # graduated by hand: 100,000 x 10 / 1e6 + 1 = 2, then 50,000 x 5 / 1e6 + 0.5 = 0.75
    assert [(line.tokens, line.amount) for line in tier_lines] == [(150_000, Decimal("2.75"))]
    assert invoice.total == Decimal("2.75")

    async def adjusted() -> bool:
        rows = await _query(world, "select count(*) as n from invoicing.line_totals where invoice_id = $1 "
                            "and kind = 'period_tier'", invoice.invoice_id)
        return rows[0]["n"] == 1
    await wait_until(adjusted, 60, "the tier adjustment to come back from the ledger")
    assigned = await _query(world, "select sum(amount) as total from invoicing.line_totals where invoice_id = $1",
                            invoice.invoice_id)
    assert assigned[0]["total"] == Decimal("2.75") == invoice.total
    spend = await _query(world, "select sum(case when money_debit like '%:spend' then amount else -amount end) as spend "
                         "from ledger.journal where chain = $1", world.bu("shop"))
    assert spend[0]["spend"] == Decimal("2.75")
    # Netted from the invoices: the tier line once, though its ledger adjustment has come back by now.
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        async with pool.acquire() as connection:
            settlement = await queries.month_settlement(connection, world.settings,
                                                         containing(month_end - timedelta(hours=1), "month", ZONE))
    finally:
        await pool.close()
    assert [flow.amount for flow in settlement.matrix
            if (flow.payer_bu, flow.provider_bu) == (world.bu("shop"), world.provider)] == [Decimal("2.75")]
    assert (settlement.positions[world.bu("shop")], settlement.positions[world.provider]) == (Decimal("-2.75"),
                                                                                            Decimal("2.75"))

    # After a broker loss, invoicing republishes byte for byte what it published: the
    # invoice, and its tier line as the Priced adjustment the ledger posted.
    payer = world.bu("shop").encode()
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        produced = [(topic, value) async for topic, key, value, _ in produced_records(connection) if key == payer]
    finally:
        await connection.close()
    published_invoice = await published_values(world.settings.bootstrap_servers or "", INVOICES_ISSUED.name, payer, 1)
    priced_on_topic = await published_values(world.settings.bootstrap_servers or "", TOKENS_PRICED.name, payer, 4)
    adjustments = [value for value in priced_on_topic if decode(Priced, value).kind == "adjustment"]
    assert produced == [(INVOICES_ISSUED.name, published_invoice[0]), (TOKENS_PRICED.name, adjustments[0])]


async def test_a_weekly_payer_gets_week_invoices_split_at_the_month_boundary(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        await handlers.set_cycle(pool, world.bu("shop"), "week", "tests", "weekly billing", datetime.now(UTC))
    finally:
        await pool.close()
    month_end = _previous_month_end()
    events = [world.usage("shop", 1, 1_000, 100, time=month_end - timedelta(hours=1)),
              world.usage("shop", 2, 2_000, 200, time=month_end - timedelta(days=8))]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, 2)
    await _wait_invoicing_has(world, world.bu("shop"), 2)
    rows = await _query(world, "select period, period_end from invoicing.chain_totals where payer_bu = $1 "
                        "order by period_end", world.bu("shop"))
    assert len({row["period"] for row in rows}) == 2
    assert rows[-1]["period_end"] <= month_end  # the week is cut at the month's end
    issued = await _close(world, containing(month_end - timedelta(hours=1), "month", ZONE).name, world.bu("shop"))
    assert [invoice.number for invoice in issued] == [1, 2]
    assert [invoice.period for invoice in issued] == [row["period"] for row in rows]


async def test_renderings_and_an_outside_consumer_validating_against_the_schemas(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    month_end = _previous_month_end()
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 1, 5_000, 500, time=month_end - timedelta(hours=1))])
    await wait_settled(world.settings, before, 1)
    await _wait_invoicing_has(world, world.bu("shop"), 1)
    mine = await _close(world, containing(month_end - timedelta(hours=1), "month", ZONE).name, world.bu("shop"))
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        books = BookIndex.of(await pricing_queries.price_books(pool))
    finally:
        await pool.close()
    csv_text = invoice_views.invoice_csv(mine, books)
    header, first_line = csv_text.splitlines()[:2]
    assert header.startswith("invoice,payer,period")
    # Each line names the book version that priced it.
    columns = dict(zip(header.split(","), first_line.split(","), strict=True))
    assert (columns["book_id"], columns["book_version"]) == (f"{world.prefix}-book", "1"), columns
    rows = [row.split(",") for row in csv_text.splitlines()]
    assert {len(row) for row in rows} == {len(rows[0])}  # the rounding and total rows too: the amount stays under its column
    assert dict(zip(rows[0], rows[-1], strict=True))["amount"] == f"{mine[0].total:f}"
    html = invoice_views.invoice_html(mine, ZONE, books, {world.bu("shop"): "Shop <&> Co"})
    assert "Shop &lt;&amp;&gt; Co" in html and f"{mine[0].total:,.2f}" in html and "<!doctype html>" in html

    path = Path(__file__).resolve().parents[2] / "examples" / "billing_consumer.py"
    spec = importlib.util.spec_from_file_location("billing_consumer", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    received = await module.consume(world.settings.bootstrap_servers, idle_timeout_s=4.0, group_id=f"example-{uuid.uuid4().hex}")
    assert received.invalid == []
    assert any(invoice["invoice_id"] == str(mine[0].invoice_id) for invoice in received.invoices)
    assert received.settlements, "closing a month publishes its settlement"
    assert all(orjson.dumps(item) for item in received.settlements)


async def test_repricing_reversals_become_credit_lines_and_mark_the_invoice_credited(backend) -> None:
    from tests.integration.test_pricing import _reprice

    world = World(backend.settings)
    await world.publish(["shop"])
    month_end = _previous_month_end()
    last_month = containing(month_end - timedelta(hours=1), "month", ZONE).name
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 1, 100_000, 10_000, time=month_end - timedelta(hours=5))])
    await wait_settled(world.settings, before, 1)
    await _wait_invoicing_has(world, world.bu("shop"), 1)
    (first,) = await _close(world, last_month, world.bu("shop"))
    assert first.total == round_to_minor(world.expected_amount(100_000, 10_000))

    await _publish_book(world, f"{world.prefix}-book", 2, datetime.now(UTC) - timedelta(days=50),
                        [{"model": world.model, "unit_prices_per_million": {"input": "1.2", "output": "4.8"}}])
    report = await _reprice(world, month_end - timedelta(days=1), month_end)
    assert (report.examined, report.corrected) == (1, 1)
    await _wait_invoicing_has(world, world.bu("shop"), 3)
    this_month = containing(datetime.now(UTC), "month", ZONE).name
    invoices = await _close(world, this_month, world.bu("shop"), early=True)
    assert [invoice.number for invoice in invoices] == [1, 2]  # per payer, without gaps
    second = invoices[-1]
    credits = [line for line in second.lines if line.kind == "credit"]
    assert [(line.period, line.tokens) for line in credits] == [(last_month, -100_000), (last_month, -10_000)]
    assert second.subtotal == -world.expected_amount(100_000, 10_000) + (Decimal("0.12") + Decimal("0.048"))
    rows = await _query(world, "select status from invoicing.invoices where invoice_id = $1", first.invoice_id)
    assert rows[0]["status"] == "credited"


async def _invoices_of(world: World, payer: str) -> list[InvoiceIssued]:
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        return await queries.invoices(pool, world.settings, bu=payer, period=None)
    finally:
        await pool.close()


async def test_the_service_closes_a_period_at_its_watermark_plus_lateness_and_the_command_closes_one_on_demand(
        backend, cli_env: Path) -> None:
    """Daily billing, so that the rule is seen whatever the day of the month: a day
    that ended more than the allowed lateness (48 h) before the event-time watermark
    is closed by the service itself; yesterday and today stay drafts, each with its
    own postings and the number it will get, until `invoice close`."""
    world = World(backend.settings)
    await world.publish(["shop"])
    payer = world.bu("shop")
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        await handlers.set_cycle(pool, payer, "day", "tests", "daily billing", datetime.now(UTC))
    finally:
        await pool.close()
    now = datetime.now(UTC)
    old_day = containing(now - timedelta(days=4), "day", ZONE)
    yesterday = containing(now - timedelta(days=1), "day", ZONE)
    today = containing(now, "day", ZONE)
    assert old_day.end <= now - timedelta(hours=48 + 2)  # behind the watermark by more than the lateness
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 1, 3_000, 300, time=now - timedelta(days=4)),
                                world.usage("shop", 3, 2_000, 200, time=now - timedelta(days=1)),
                                world.usage("shop", 2, 1_000, 100, time=now - timedelta(seconds=30))])
    await wait_settled(world.settings, before, 3)

    async def closed_by_the_service() -> bool:
        rows = await _query(world, "select count(*) as n from invoicing.invoices where payer_bu = $1", payer)
        return rows[0]["n"] == 1
    await wait_until(closed_by_the_service, SERVICE_CLOSE_TIMEOUT_S, "the service to close the old day at its watermark")
    closed = await _query(world, "select actor from invoicing.closed_periods where period = $1", old_day.name)
    assert [row["actor"] for row in closed] == ["watermark"]
    listed = await _invoices_of(world, payer)
    assert [(invoice.period, invoice.number, invoice.status) for invoice in listed] == [
        (old_day.name, 1, "issued"), (yesterday.name, 2, "draft"), (today.name, 3, "draft")]
    assert listed[0].total == round_to_minor(world.expected_amount(3_000, 300))
    assert listed[1].subtotal == world.expected_amount(2_000, 200)  # its own day only
    assert listed[2].subtotal == world.expected_amount(1_000, 100)

    closing = ("invoice", "close", "--period", today.name, "--actor", "tests", "--early")
    assert "invoices issued" in await tokenhub(*closing)
    await tokenhub(*closing)  # again: nothing left to issue, no number used up
    listed = await _invoices_of(world, payer)
    assert [(invoice.period, invoice.number, invoice.status) for invoice in listed] == [
        (old_day.name, 1, "issued"), (yesterday.name, 2, "issued"), (today.name, 3, "issued")]
    assert [invoice.subtotal for invoice in listed[1:]] == [world.expected_amount(2_000, 200),
                                                             world.expected_amount(1_000, 100)]

    html = await tokenhub("invoice", "show", "--bu", payer, "--period", today.name, "--format", "html")
    assert f"Shop ({payer})" in html and "Provider" in html  # display names beside the slugs
    assert f"Invoice {payer}-0003" in html and "Subtotal" in html and "Rounding" in html


async def test_spend_month_to_date_shows_the_period_tier_reached_so_far(
        backend, cli_env: Path) -> None:
    world = World(backend.settings)
    model = f"{world.prefix}-tiered"
    await world.publish(["shop"], extra_models=[{"model_id": model, "provider_bu": world.provider,
                                                 "modality": "text", "token_classes": ["input", "output"]}])
    await _publish_book(world, f"{world.prefix}-tiers", 1, datetime.now(UTC) - timedelta(days=60), [{
        "model": model, "unit_prices_per_million": {"input": "1", "output": "2"},
        "period_tiers": {"mode": "volume", "tiers": [
            {"up_to_tokens": 100_000, "unit_price_per_million": "10", "flat_fee": "1"},
            {"up_to_tokens": None, "unit_price_per_million": "5", "flat_fee": "0.5"}]}}])

    async def spend_now() -> dict:
        return _json_output(await tokenhub("spend", "--bu", world.bu("shop"), "--json"))

    sent = 0
    for count, tier_tokens, charge in ((1, 50_000, "1.5"), (2, 150_000, "1.25")):
        # by hand, volume: 50,000 x 10 / 1e6 + 1; then all 150,000 at the second tier, 0.75 + 0.5
        before = await read_counters(world.settings)
        await emit(world.settings, [world.usage("shop", sent + index, 40_000, 10_000, model=model, app="search")
                                    for index in range(count)])
        await wait_settled(world.settings, before, count)
        sent += count
        await _wait_invoicing_has(world, world.bu("shop"), sent)
        report = await spend_now()
        assert report["period"] == containing(datetime.now(UTC), "month", ZONE).name
        assert [(line["consumer_bu"], line["app"], line["model"], line["token_class"], line["tokens"], line["amount"])
                for line in report["lines"]] == [
            (world.bu("shop"), "search", model, "input", str(40_000 * sent), f"{Decimal('0.04') * sent:.12f}"),
            (world.bu("shop"), "search", model, "output", str(10_000 * sent), f"{Decimal('0.02') * sent:.12f}")]
        assert Decimal(report["spend"]) == Decimal("0.06") * sent
        assert report["period_tiers"] == [{"model": model, "tokens": str(tier_tokens), "charge": f"{Decimal(charge):.12f}"}]


async def test_a_posting_ahead_of_a_missing_sequence_waits_for_it_and_says_so(backend) -> None:
    """On ledger.posted itself: a chain's third posting before its second waits,
    listed with the sequence it waits for; the second arrives and both apply; a
    copy of the first is a duplicate by its sequence."""
    world = World(backend.settings)
    payer = world.bu("gapped")
    head = ChainHead(payer, 0, GENESIS_HASH)
    chain = []
    for index in range(3):
        priced = PRICED.model_copy(update={"id": derive_id("tests", world.prefix, str(index)), "payer_bu": payer,
                                           "consumer_bu": payer, "event_time": datetime.now(UTC) - timedelta(hours=1)})
        entry = post(priced, head, datetime.now(UTC))
        head = ChainHead(payer, entry.sequence, entry.entry_hash)
        chain.append((payer.encode(), canonical_json(entry)))
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        async def waiting_for(missing: int | None) -> bool:
            gaps = [(chain.missing_sequence, chain.waiting_from, chain.waiting)
                    for chain in await queries.waiting_chains(pool) if chain.chain == payer]
            return gaps == ([] if missing is None else [(missing, 3, 1)])

        before = await read_counters(world.settings)
        await publish_events(world.settings, LEDGER_POSTED.name, [chain[0], chain[2]])
        await wait_until(lambda: waiting_for(2), 60, "the third posting to wait for the second")
        rows = await _query(world, "select coalesce(sum(postings), 0) as n from invoicing.chain_totals "
                            "where payer_bu = $1", payer)
        assert rows[0]["n"] == 1
        await publish_events(world.settings, LEDGER_POSTED.name, [chain[1], chain[0]])
        await wait_until(lambda: waiting_for(None), 60, "the gap to close")

        async def all_applied() -> bool:
            now = await read_counters(world.settings)
            return delta(now, before, "invoicing.duplicates") == 1 and delta(now, before, "invoicing.postings") == 3
        await wait_until(all_applied, 60, "the three postings applied once, the copy counted as a duplicate")
        rows = await _query(world, "select postings, head_sequence from invoicing.chain_totals where payer_bu = $1", payer)
        assert [(row["postings"], row["head_sequence"]) for row in rows] == [(3, 3)]
        totals = await _query(world, "select sum(tokens) as tokens, sum(amount) as amount from invoicing.line_totals "
                              "where payer_bu = $1", payer)
        assert (totals[0]["tokens"], totals[0]["amount"]) == (3 * PRICED.total_tokens, 3 * PRICED.total_amount)
    finally:
        await pool.close()
