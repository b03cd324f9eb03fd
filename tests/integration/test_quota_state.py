"""Over quota is visible (issue 16, part 6), on the real stack: a payer pushed
past its hard limit has its state on the compacted topic `quota.state`
(exhausted, exact spent and remaining, read with a real consumer); usage that
arrives after that is billed all the same and marked overage, on the journal,
on `tokenhub spend` and the API's spend, on the statement and on the invoice,
totals unchanged; raising the limit and a new month publish the quota allowed
again. The API's quota check, recomputed from the topics, agrees with the
record. The ledger runs with a clock in the previous month, as in
test_ledger_budgets, so a new month can restore the quota."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from tests.integration.support import World, emit, publish_events, published_values, read_counters, wait_settled
from tests.integration.test_invoicing import _close, _wait_invoicing_has
from tests.integration.test_ledger_budgets import _budget
from tokenhub.api import models as api_models
from tokenhub.api import reads as api_reads
from tokenhub.api.quota import POSTED_DECODER, QuotaBook
from tokenhub.audit import log
from tokenhub.audit.verify import verify
from tokenhub.contracts.budgets import BudgetSet, QuotaStateChanged
from tokenhub.contracts.events import decode
from tokenhub.contracts.periods import containing
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.topics import BUDGETS_CONFIGURED, LEDGER_POSTED, QUOTA_STATE
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.common.db import create_pool
from tokenhub.services.invoicing import queries as invoicing_queries
from tokenhub.services.pricing import queries as pricing_queries
from tokenhub.views import invoices as invoice_views

pytestmark = pytest.mark.asyncio(loop_scope="session")
ZONE = "Asia/Shanghai"
CLI_TIMEOUT_S = 120
EVENT = Decimal("0.336")
"""Each event: 100,000 input + 10,000 output Tokens = 0.24 + 0.096 CNY."""


def _cli(world: World, *arguments: str) -> str:
    """`tokenhub ...` as a person runs it, against this stack; its output."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TOKENHUB_")}
    environment.update({"TOKENHUB_BOOTSTRAP_SERVERS": world.settings.bootstrap_servers or "",
                        "TOKENHUB_DATABASE_URL": world.settings.database_url or "", "TOKENHUB_TIMEZONE": ZONE})
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], env=environment, capture_output=True,
                            text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, f"tokenhub {' '.join(arguments)}: {result.stderr}"
    return result.stdout


async def _latest_state(world: World, payer: str, wanted: dict[str, Any]) -> tuple[QuotaStateChanged, list[QuotaStateChanged]]:
    """Read `quota.state` from the beginning with a real consumer until the
    payer's latest record has the wanted figures; that record and all of the payer's."""
    def arrived(values: list[bytes]) -> bool:
        if not values:
            return False
        latest = orjson.loads(max(values, key=lambda value: orjson.loads(value)["sequence"]))
        return all(latest.get(name) == value for name, value in wanted.items())
    values = await published_values(world.settings.bootstrap_servers or "", QUOTA_STATE.name, payer.encode(), 0,
                                    until=arrived)
    records = sorted((decode(QuotaStateChanged, value) for value in values), key=lambda record: record.sequence)
    return records[-1], records


async def test_quota_state_published_and_usage_over_quota_billed_and_marked(backend) -> None:
    world = World(backend.settings)
    services = backend.services
    this_month = containing(datetime.now(UTC), "month", ZONE)
    last_month_day = this_month.start - timedelta(days=1)
    last_month = containing(last_month_day, "month", ZONE)
    payer = world.bu("shop")
    # The ledger and invoicing on last month's clock: the ledger's quota month is last
    # month's, and invoicing leaves last month open until this test closes it, even when
    # other tests' usage of today has moved its event-time watermark past it.
    clock = {"TOKENHUB_NOW": (last_month_day + timedelta(hours=12)).isoformat()}
    for service in ("ledger", "invoicing"):
        services.stop_one(service)
        services.start(service, extra_env=clock)
    try:
        await _over_quota_and_its_invoice(world, services, payer, this_month, last_month_day, last_month)
    finally:
        services.stop_one("invoicing")
        services.start("invoicing")


async def _over_quota_and_its_invoice(world: World, services: Any, payer: str, this_month: Any, last_month_day: datetime,
                                      last_month: Any) -> None:
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        await world.publish(["shop"])
        budget = _budget(world, last_month.name, "1.00", "1.00", last_month_day, thresholds=("100",))
        await publish_events(world.settings, BUDGETS_CONFIGURED.name, [budget])

        async def budget_stored() -> bool:
            return await connection.fetchval("select count(*) from ledger.budgets where payer_bu = $1", payer) == 1
        await wait_until(budget_stored, 30, "the budget to reach the ledger")
        sent = 0

        async def send(count: int, when: datetime) -> None:
            nonlocal sent
            before = await read_counters(world.settings)
            await emit(world.settings, [world.usage("shop", sent + index, 100_000, 10_000, time=when + timedelta(seconds=index),
                                                    app="search") for index in range(count)])
            sent += count
            await wait_settled(world.settings, before, count)

        await send(3, last_month_day)  # 1.008: the third reaches the hard limit of 1.00; none of them over it
        exhausted, records = await _latest_state(world, payer, {"spent": "1.008000000000"})
        assert (exhausted.state, exhausted.period, exhausted.limit, exhausted.spent, exhausted.remaining,
                exhausted.budget_id, exhausted.currency) == (
            "exhausted", last_month.name, Decimal("1.000000000000"), Decimal("1.008000000000"), Decimal(0),
            BudgetSet.model_validate_json(budget[1]).id, "CNY")
        assert [record.sequence for record in records] == list(range(1, len(records) + 1))

        await send(2, last_month_day + timedelta(minutes=5))  # after exhaustion: billed, and marked overage
        exhausted, records = await _latest_state(world, payer, {"spent": "1.680000000000"})
        assert (exhausted.state, exhausted.limit, exhausted.remaining) == ("exhausted", Decimal(1), Decimal(0))
        assert [record.sequence for record in records] == list(range(1, len(records) + 1)), "one number per record"
        marks = await connection.fetch("select overage, amount from ledger.journal where chain = $1 order by sequence", payer)
        assert [(row["overage"], row["amount"]) for row in marks] == [(False, EVENT)] * 3 + [(True, EVENT)] * 2

        # The API's quota check, recomputed from the topics it follows, agrees with the record.
        book = QuotaBook(ZONE)
        budgets = await log.read_topic(world.settings.bootstrap_servers or "", BUDGETS_CONFIGURED.name, idle_timeout_s=1.5)
        book.apply_budgets(decode(BudgetSet, record.value) for record in budgets if record.key == payer.encode())
        posted = await published_values(world.settings.bootstrap_servers or "", LEDGER_POSTED.name, payer.encode(), 5)
        book.apply_posted(POSTED_DECODER.decode(value) for value in posted)
        answer = book.answer(payer, None, None, last_month_day + timedelta(hours=12))
        assert answer.binding is not None
        assert (answer.allowed, answer.binding.spent, answer.binding.hard_limit, answer.binding.remaining) == (
            exhausted.state == "allowed", exhausted.spent, exhausted.limit, exhausted.remaining)

        # A raised limit restores the quota: allowed, with what is left of it.
        await publish_events(world.settings, BUDGETS_CONFIGURED.name, [
            _budget(world, last_month.name, "2.00", "2.00", last_month_day + timedelta(hours=1), thresholds=("100",))])
        raised, _ = await _latest_state(world, payer, {"limit": "2.000000000000"})
        assert (raised.state, raised.spent, raised.remaining, raised.sequence) == (
            "allowed", Decimal("1.68"), Decimal("0.32"), exhausted.sequence + 1)

        # The first usage of a new month: the quota of the new month, allowed and not marked.
        await send(1, this_month.start + timedelta(minutes=1))
        renewed, _ = await _latest_state(world, payer, {"period": this_month.name})
        assert (renewed.state, renewed.spent, renewed.remaining, renewed.limit) == (
            "allowed", EVENT, Decimal("1.664"), Decimal(2))
        assert await connection.fetchval("select count(*) filter (where overage) from ledger.journal where chain = $1",
                                         payer) == 2
        spend = await connection.fetchval("select debit_total - credit_total from ledger.balances where account = $1",
                                          f"bu:{payer}:spend")
        assert spend == 6 * EVENT == Decimal("2.016"), "usage over quota is billed: the balance holds all of it"

        async def relayed() -> bool:
            return not await connection.fetchval("select count(*) from ledger.outbox where $1 = any(topics)", QUOTA_STATE.name)
        await wait_until(relayed, 30, "the quota states to be published")
    finally:
        await connection.close()
        services.stop_one("ledger")
        services.start("ledger")

    # The invoice of last month: every event billed, the overage on lines of its own.
    await _wait_invoicing_has(world, payer, 6)
    invoices = [invoice for invoice in await _close(world, last_month.name, payer) if invoice.period == last_month.name]
    assert len(invoices) == 1
    invoice = invoices[0]
    assert (invoice.subtotal, invoice.total) == (5 * EVENT, Decimal("1.68")), "overage is a mark, never a second charge"
    lines = {(line.token_class, line.overage): (line.tokens, line.amount) for line in invoice.lines}
    assert lines == {("input", None): (300_000, Decimal("0.72")), ("output", None): (30_000, Decimal("0.288")),
                     ("input", True): (200_000, Decimal("0.48")), ("output", True): (20_000, Decimal("0.192"))}
    assert invoice_views.overage_of(invoice) == Decimal("0.672")
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        books = BookIndex.of(await pricing_queries.price_books(pool))
        csv_rows = [row.split(",") for row in invoice_views.invoice_csv([invoice], books).splitlines()]
        overage_column = csv_rows[0].index("overage")
        assert sorted(row[overage_column] for row in csv_rows[1:] if row[4] == "usage") == ["", "", "true", "true"]
        assert csv_rows[-1][-1] == "1.680000000000"
        html = invoice_views.invoice_html([invoice], ZONE, books)
        assert html.count("usage, over quota") == 2 and "0.672000000000" in html
        document = invoice_views.invoices_document([invoice], books)[0]
        assert sorted(str(line["overage"]) for line in document["lines"]) == ["None", "None", "True", "True"]

        found = await invoicing_queries.spend(pool, world.settings, payer, last_month)
        assert (found.total, found.overage) == (Decimal("1.68"), Decimal("0.672"))
        api_spend = api_models.Spend.model_validate(await api_reads.spend(pool, world.settings, payer, last_month))
        assert (api_spend.spend, api_spend.overage) == ("1.680000000000", "0.672000000000")

        report = await verify(pool, world.settings.bootstrap_servers, scope=payer, zone=ZONE)
        assert report.ok, [(check.name, check.violations[:3]) for check in report.checks if not check.ok]
    finally:
        await pool.close()

    spend_json = orjson.loads(_cli(world, "spend", "--bu", payer, "--period", last_month.name, "--json"))
    assert (spend_json["spend"], spend_json["overage"]) == ("1.680000000000", "0.672000000000")
    assert sorted(line["overage"] for line in spend_json["lines"]) == ["0.192000000000", "0.480000000000"]
    spend_text = _cli(world, "spend", "--bu", payer, "--period", last_month.name)
    assert "over quota: 0.672000 CNY" in spend_text
    statement = orjson.loads(_cli(world, "statement", "--bu", payer, "--from", last_month.start.isoformat(),
                                  "--to", last_month.end.isoformat(), "--json"))
    assert statement["overage"] == "0.672000000000"
    assert [entry["overage"] for entry in statement["entries"]] == [False] * 3 + [True] * 2
    assert statement["movements"]["spend"] == "1.680000000000"
    statement_text = _cli(world, "statement", "--bu", payer, "--from", last_month.start.isoformat(),
                          "--to", last_month.end.isoformat())
    assert statement_text.count("charge, over quota") == 2 and "over quota: spend 0.672000000000" in statement_text
    invoice_text = _cli(world, "invoice", "show", "--bu", payer, "--period", last_month.name)
    assert invoice_text.count("usage, over quota") == 2 and "TOTAL CNY" in invoice_text and "1.68" in invoice_text
