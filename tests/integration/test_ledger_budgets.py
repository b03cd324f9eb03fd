"""Budgets on the real stack: each threshold crossing raises its alert once,
also after the priced log is replayed into the ledger; a hard limit exhausts
the payer's quota naming the consumers and apps it funds; raising the budget
and the start of a new month restore it. The ledger runs with a clock in the
previous month, so that month's usage can exhaust a quota that the first
usage of this month then restores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from tests.integration.support import World, delta, emit, publish_events, read_counters, wait_settled
from tokenhub.audit import log
from tokenhub.contracts.budgets import BudgetSet, budget_set_id
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.periods import containing
from tokenhub.contracts.topics import BUDGET_ALERTS, BUDGETS_CONFIGURED, TOKENS_PRICED
from tokenhub.contracts.stored import unpack
from tokenhub.infra.pipeline import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")
ZONE = "Asia/Shanghai"


def _budget(world: World, month: str, amount: str, hard_limit: str | None, at, consumer: str | None = None,  # noqa: ANN001
            thresholds: tuple[str, ...] = ("50", "80", "100")) -> tuple[bytes, bytes]:
    payer = world.bu("shop")
    budget = BudgetSet(
        id=budget_set_id(payer, consumer, month, at.isoformat()), event_time=at, cause_id="tests:budget", payer_bu=payer,
        consumer_bu=consumer, period_from=month, amount=Decimal(amount), thresholds_percent=tuple(map(Decimal, thresholds)),
        hard_limit=Decimal(hard_limit) if hard_limit else None, currency="CNY", actor="finance-tests",
        reason="test budget", set_at=at)
    return payer.encode(), canonical_json(budget)


async def _alerts(connection: asyncpg.Connection, payer: str) -> list[tuple[str, str, str, object]]:
    rows = await connection.fetch("select kind, scope, period, threshold_percent from ledger.budget_alerts "
                                  "where payer_bu = $1 order by raised_at, kind, threshold_percent", payer)
    return [(row["kind"], row["scope"], row["period"], row["threshold_percent"]) for row in rows]


async def test_budget_alerts_once_quota_exhausted_and_restored(backend) -> None:
    world = World(backend.settings)
    services = backend.services
    this_month = containing(datetime.now(UTC), "month", ZONE)
    last_month_day = this_month.start - timedelta(days=1)  # within metering's accepted window
    last_month = containing(last_month_day, "month", ZONE).name
    services.stop_one("ledger")
    services.start("ledger", extra_env={"TOKENHUB_NOW": (last_month_day + timedelta(hours=12)).isoformat()})
    connection = await asyncpg.connect(world.settings.database_url)
    payer = world.bu("shop")
    try:
        # shop pays for maps as well: a quota names both consumers and their apps.
        await world.publish(["shop", "maps"], funding=[{
            "agreement_id": f"{world.prefix}-maps", "consumer_bu": world.bu("maps"),
            "payers": [{"bu": payer, "percent": "100"}], "effective_from": (last_month_day - timedelta(days=3)).isoformat()}])
        await publish_events(world.settings, BUDGETS_CONFIGURED.name, [
            _budget(world, last_month, "1.00", "1.20", last_month_day),
            _budget(world, last_month, "0.50", None, last_month_day, consumer=world.bu("maps"), thresholds=("100",)),
        ])

        async def budgets_stored() -> bool:
            return await connection.fetchval("select count(*) from ledger.budgets where payer_bu = $1", payer) == 2
        await wait_until(budgets_stored, 30, "the budgets to reach the ledger")

        # Each event: 100,000 input + 10,000 output Tokens = 0.24 + 0.096 = 0.336 CNY.
        sent = 0

        async def send(consumer: str, count: int, when, app: str) -> None:  # noqa: ANN001
            nonlocal sent
            before = await read_counters(world.settings)
            await emit(world.settings, [world.usage(consumer, sent + index, 100_000, 10_000, time=when + timedelta(seconds=index), app=app)
                                        for index in range(count)])
            sent += count
            await wait_settled(world.settings, before, count)

        await send("shop", 2, last_month_day, "search")  # 0.672: 50 %
        assert await _alerts(connection, payer) == [("threshold", "*", last_month, Decimal(50))]
        await send("maps", 2, last_month_day + timedelta(minutes=5), "navigation")  # 1.344: 80, 100 %, hard limit; maps 0.672
        alerts = await _alerts(connection, payer)
        assert sorted(alerts[1:], key=str) == sorted([
            ("threshold", "*", last_month, Decimal(80)), ("threshold", "*", last_month, Decimal(100)),
            ("threshold", world.bu("maps"), last_month, Decimal(100)), ("exhausted", "*", last_month, None)], key=str)

        # Raising the budget restores the quota; exhausting it again and then a new month restores it again.
        await publish_events(world.settings, BUDGETS_CONFIGURED.name, [
            _budget(world, last_month, "2.00", "1.80", last_month_day + timedelta(hours=1))])

        async def raised() -> bool:
            return ("restored", "*", last_month, None) in await _alerts(connection, payer)
        await wait_until(raised, 30, "the raised budget to restore the quota")
        await send("shop", 2, last_month_day + timedelta(minutes=10), "search")  # 2.016 >= 1.80
        assert (await _alerts(connection, payer)).count(("exhausted", "*", last_month, None)) == 2
        await send("shop", 1, this_month.start + timedelta(minutes=1), "search")  # the first usage of this month
        assert (await _alerts(connection, payer))[-1] == ("restored", "*", this_month.name, None)
        settled_alerts = await _alerts(connection, payer)
        assert len(settled_alerts) == 8

        # The priced log again, as after a republish into an empty broker: nothing is raised twice.
        priced = await connection.fetch("select priced as payload from ledger.journal where chain = $1", payer)
        assert len(priced) == sent == 7
        before = await read_counters(world.settings)
        await publish_events(world.settings, TOKENS_PRICED.name, [(payer.encode(), unpack(row["payload"])) for row in priced])

        async def replayed() -> bool:
            return delta(await read_counters(world.settings), before, "ledger.duplicates") == 7
        await wait_until(replayed, 30, "the ledger to see the replayed log")
        assert await _alerts(connection, payer) == settled_alerts
        spend = await connection.fetchval("select debit_total - credit_total from ledger.balances where account = $1",
                                          f"bu:{payer}:spend")
        assert spend == Decimal("2.352")

        async def relayed() -> bool:
            return not await connection.fetchval("select count(*) from ledger.outbox where $1 = any(topics)", BUDGET_ALERTS.name)
        await wait_until(relayed, 30, "the alerts to be published")
    finally:
        await connection.close()
        services.stop_one("ledger")
        services.start("ledger")

    records = await log.read_topic(world.settings.bootstrap_servers or "", BUDGET_ALERTS.name, idle_timeout_s=1.5)
    published = [orjson.loads(record.value) for record in records]
    published = [alert for alert in published if alert.get("payer_bu") == payer]
    assert len(published) == len({alert["id"] for alert in published}) == 8, "each alert arrives once"
    types = [alert["type"] for alert in published]
    assert types.count("budget.threshold_crossed") == 4
    assert types.count("budget.quota_exhausted") == 2 and types.count("budget.quota_restored") == 2
    exhausted = next(alert for alert in published if alert["type"] == "budget.quota_exhausted")
    assert (exhausted["payer_bu"], exhausted["consumers"], exhausted["apps"], exhausted["spent"], exhausted["hard_limit"]) == (
        payer, sorted([world.bu("maps"), payer]), ["navigation", "search"], "1.344000000000", "1.200000000000")
    restored = [alert for alert in published if alert["type"] == "budget.quota_restored"]
    assert [(alert["reason"], alert["period"], alert["exhausted_period"]) for alert in restored] == [
        ("budget_raised", last_month, last_month), ("new_period", this_month.name, last_month)]
