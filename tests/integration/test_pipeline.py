"""The pipeline end to end on a real broker and database: exact balances,
duplicates stopped where they arrive, a ledger crash between its database
commit and its offset commit, and replay against the projection."""

from __future__ import annotations

import random
from decimal import Decimal

import asyncpg
import orjson
import pytest

from tokenhub.audit.replay import replay
from tokenhub.services.ledger.queries import balances
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.topics import LEDGER_POSTED, TOKENS_CONSUMED, TOKENS_PRICED
from tokenhub.contracts.stored import unpack
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.common.db import create_pool
from tests.integration.support import (
    SETTLE_TIMEOUT_S,
    World,
    delta,
    emit,
    publish_events,
    published_values,
    read_counters,
    wait_settled,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _sizes(count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(1, 200_000), rng.randint(1, 20_000)) for _ in range(count)]


async def _balances_by_bu(world: World) -> dict[str, object]:
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        return {row.bu: row for row in await balances(pool) if row.bu.startswith(world.prefix)}
    finally:
        await pool.close()


async def test_events_in_exact_balances_out(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop", "maps"])
    sizes = _sizes(300, seed=1)
    events = [world.usage("shop" if index % 3 else "maps", index, *size) for index, size in enumerate(sizes)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    after = await wait_settled(world.settings, before, len(events))

    assert delta(after, before, "metering.accepted") == 300
    assert delta(after, before, "ledger.posted") == 300
    expected_shop = sum((world.expected_amount(*size) for index, size in enumerate(sizes) if index % 3), Decimal(0))
    expected_maps = sum((world.expected_amount(*size) for index, size in enumerate(sizes) if not index % 3), Decimal(0))
    rows = await _balances_by_bu(world)
    assert rows[world.bu("shop")].spend == expected_shop
    assert rows[world.bu("maps")].spend == expected_maps
    assert rows[world.provider].revenue == expected_shop + expected_maps
    assert rows[world.provider].tokens_served == sum(i + o for i, o in sizes)
    assert rows[world.bu("shop")].tokens_consumed == sum(i + o for index, (i, o) in enumerate(sizes) if index % 3)


async def test_money_and_token_ledgers_balance(backend) -> None:
    connection = await asyncpg.connect(backend.settings.database_url)
    try:
        rows = await connection.fetch(
            "select ledger, sum(debit_total) as debit, sum(credit_total) as credit from ledger.balances group by ledger")
        unbalanced_entries = await connection.fetchval(
            "select count(*) from ledger.journal where money_debit = money_credit or tokens_debit = tokens_credit "
            "or amount < 0 or tokens < 0")
    finally:
        await connection.close()
    assert {row["ledger"] for row in rows} == {"money", "tokens"}
    for row in rows:
        assert row["debit"] == row["credit"], row["ledger"]
    assert unbalanced_entries == 0


async def test_duplicates_are_stopped_by_the_layer_they_reach(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    events = [world.usage("shop", index, 1_000 + index, 100) for index in range(50)]
    first = await read_counters(world.settings)
    await emit(world.settings, events)
    settled_once = await wait_settled(world.settings, first, len(events))
    spend_once = (await _balances_by_bu(world))[world.bu("shop")].spend

    # The same usage again: metering's dedup stops every one of them.
    await emit(world.settings, events)
    settled_twice = await wait_settled(world.settings, settled_once, len(events))
    assert delta(settled_twice, settled_once, "metering.duplicates") == 50
    assert delta(settled_twice, settled_once, "metering.accepted") == 0
    assert delta(settled_twice, settled_once, "pricing.received") == 0

    # The same TokenConsumed again, straight onto tokens.consumed: pricing's record of what it priced stops them.
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        # Stored packed (contracts.stored): the canonical bytes are what was published.
        consumed = [payload for row in await connection.fetch("select payload from metering.consumed where usage_source = $1",
                                                              f"tests/{world.prefix}")
                    if orjson.loads(payload := unpack(row["payload"]))["payer_bu"] == world.bu("shop")]
        priced = await connection.fetch(
            "select priced as payload from ledger.journal where chain = $1",
            world.bu("shop"))
    finally:
        await connection.close()
    posted = await published_values(world.settings.bootstrap_servers or "", LEDGER_POSTED.name, world.bu("shop").encode(), 50)
    assert len(consumed) == 50 and len(priced) == 50 and len(posted) == 50
    await publish_events(world.settings, TOKENS_CONSUMED.name, [(world.bu("shop").encode(), payload) for payload in consumed])
    await publish_events(world.settings, TOKENS_PRICED.name, [(world.bu("shop").encode(), unpack(row["payload"])) for row in priced])
    # And the same LedgerPosted again: invoicing's chain watermarks stop them.
    await publish_events(world.settings, LEDGER_POSTED.name, [(world.bu("shop").encode(), value) for value in posted])

    async def stopped() -> bool:
        now = await read_counters(world.settings)
        return (delta(now, settled_twice, "pricing.duplicates") == 50
                and delta(now, settled_twice, "ledger.duplicates") == 50
                and delta(now, settled_twice, "invoicing.duplicates") == 50)
    await wait_until(stopped, 60, "pricing, the ledger and invoicing to stop the duplicates")
    final = await read_counters(world.settings)
    assert delta(final, settled_twice, "ledger.posted") == 0
    assert delta(final, settled_twice, "invoicing.postings") == 0
    assert delta(final, first, "ledger.posted") == 50
    assert (await _balances_by_bu(world))[world.bu("shop")].spend == spend_once


async def test_ledger_killed_between_database_commit_and_offset_commit(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    services = backend.services
    services.stop_one("ledger")
    services.start("ledger", extra_env={"TOKENHUB_FAULT_POINT": "ledger.after_db_commit:1"})
    sizes = _sizes(400, seed=2)
    events = [world.usage("shop", index, *size) for index, size in enumerate(sizes)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)

    async def crashed() -> bool:
        return not services.running("ledger")
    await wait_until(crashed, 60, "the ledger to die at its fault point")
    assert services.processes["ledger"].returncode == -9  # SIGKILL, no shutdown hooks
    services.processes.pop("ledger")
    services.start("ledger")
    after = await wait_settled(world.settings, before, len(events))

    # The batch committed before the crash is counted as settled already; its
    # redelivery to the restarted ledger may land a moment after: wait for it.
    async def redelivered() -> bool:
        nonlocal after
        after = await read_counters(world.settings)
        return delta(after, before, "ledger.duplicates") > 0
    await wait_until(redelivered, SETTLE_TIMEOUT_S, "the batch committed before the crash to be redelivered")
    assert delta(after, before, "ledger.posted") == 400
    expected = sum((world.expected_amount(*size) for size in sizes), Decimal(0))
    assert (await _balances_by_bu(world))[world.bu("shop")].spend == expected
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        entries, distinct = await connection.fetchrow(
            "select count(*), count(distinct priced_id) from ledger.journal where chain = $1", world.bu("shop"))
        sequences = await connection.fetchval(
            "select array_agg(sequence order by sequence) from ledger.journal where chain = $1", world.bu("shop"))
    finally:
        await connection.close()
    assert entries == distinct == 400
    assert sequences == list(range(1, 401)), "the payer's chain has no gap and no repeat"


async def test_replay_equals_projection_and_a_corrupted_projection_fails(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    events = [world.usage("shop", index, 5_000, 500) for index in range(20)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, len(events))
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        report = await replay(pool, world.settings.bootstrap_servers, source="topic", idle_timeout_s=3.0)
        assert report.ok, report.differences
        account = f"bu:{world.bu('shop')}:spend"
        async with pool.acquire() as connection:
            await connection.execute(
                "update ledger.balances set debit_total = debit_total + 0.000000000001 where ledger = 'money' and account = $1",
                account)
        try:
            broken = await replay(pool, world.settings.bootstrap_servers, source="topic", idle_timeout_s=3.0)
        finally:
            async with pool.acquire() as connection:
                await connection.execute(
                    "update ledger.balances set debit_total = debit_total - 0.000000000001 where ledger = 'money' and account = $1",
                    account)
        assert not broken.ok
        assert [(bu, figure) for bu, figure, _, _ in broken.differences] == [(world.bu("shop"), "spend")]
        _, _, rebuilt, projected = broken.differences[0]
        assert projected - rebuilt == Decimal("0.000000000001")
    finally:
        await pool.close()
