"""The ledger SIGKILLed while usage flows, at its fault-injection points (mid
batch, after the database commit before the offset commit, after the commit
before the outbox publish) and at random moments, restarted each time: every
balance then equals an independent sum of the emitted events to the last
digit, nothing is posted twice, and every ledger.posted sequence is complete.
The long run (ten kills, 50,000 events) is opt-in: `pytest -m soak`."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from tests.integration.support import World, emit, read_counters, wait_settled
from tokenhub.audit import log, verify
from tokenhub.contracts.topics import LEDGER_POSTED
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.common.db import create_pool

pytestmark = pytest.mark.asyncio(loop_scope="session")
CONSUMERS = ("shop", "maps", "video")
KILL_WAIT_S = 90


async def _posted(connection: asyncpg.Connection) -> int:
    return await connection.fetchval("select coalesce((select value from ledger.counters where name = 'posted'), 0)")


async def _kill_at(backend, kill: str, rng: random.Random, connection: asyncpg.Connection) -> None:  # noqa: ANN001
    """One SIGKILL: at a fault point (`point:N`, the ledger kills itself the N-th
    time it passes there) or at a random moment (`random`: once a random number
    of further entries were posted). Then a plain restart."""
    services = backend.services
    services.stop_one("ledger")
    if kill == "random":
        services.start("ledger")
        target = await _posted(connection) + rng.randint(1, 1_500)

        async def advanced() -> bool:
            return await _posted(connection) >= target or not services.running("ledger")
        await wait_until(advanced, KILL_WAIT_S, "the ledger to post a random number of entries")
        services.kill("ledger")
    else:
        services.start("ledger", extra_env={"TOKENHUB_FAULT_POINT": kill})

        async def died() -> bool:
            return not services.running("ledger")
        await wait_until(died, KILL_WAIT_S, f"the ledger to die at {kill}")
        assert services.processes.pop("ledger").returncode == -9, f"{kill}: not a SIGKILL"
    services.start("ledger")


async def _run(backend, events_count: int, kills: list[str], seed: int) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(list(CONSUMERS))
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=2)
    plan = [(CONSUMERS[index % 3], rng.randint(1, 300_000), rng.randint(0, 30_000)) for index in range(events_count)]
    usage = [world.usage(consumer, index, tokens_in, tokens_out, time=start + timedelta(milliseconds=index))
             for index, (consumer, tokens_in, tokens_out) in enumerate(plan)]
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        before = await read_counters(world.settings)
        await emit(world.settings, usage)
        for kill in kills:
            await _kill_at(backend, kill, rng, connection)
        await wait_settled(world.settings, before, events_count)

        async def relayed() -> bool:
            return not await connection.fetchval("select count(*) from ledger.outbox")
        await wait_until(relayed, 60, "the ledger's outbox to drain")

        # An independent sum of the emitted events, computed by hand.
        spend: dict[str, Decimal] = defaultdict(Decimal)
        tokens: dict[str, int] = defaultdict(int)
        for consumer, tokens_in, tokens_out in plan:
            spend[world.bu(consumer)] += world.expected_amount(tokens_in, tokens_out)
            tokens[world.bu(consumer)] += tokens_in + tokens_out
        rows = {row["account"]: row for row in await connection.fetch(
            "select account, debit_total, credit_total from ledger.balances where account like $1", f"bu:{world.prefix}-%")}
        for consumer in CONSUMERS:
            payer = world.bu(consumer)
            assert rows[f"bu:{payer}:spend"]["debit_total"] - rows[f"bu:{payer}:spend"]["credit_total"] == spend[payer]
            assert rows[f"bu:{payer}:consumed"]["debit_total"] == tokens[payer]
        revenue = rows[f"bu:{world.provider}:revenue"]
        assert revenue["credit_total"] - revenue["debit_total"] == sum(spend.values(), Decimal(0))
        assert rows[f"bu:{world.provider}:served"]["credit_total"] == sum(tokens.values())

        payers = [world.bu(consumer) for consumer in CONSUMERS]
        entries, distinct = await connection.fetchrow(
            "select count(*), count(distinct priced_id) from ledger.journal where chain = any($1::text[])", payers)
        assert entries == distinct == events_count, "no Priced posted twice, none lost"
        lengths = {row["chain"]: row["sequences"] for row in await connection.fetch(
            "select chain, array_agg(sequence order by sequence) as sequences from ledger.journal "
            "where chain = any($1::text[]) group by chain", payers)}
        for payer in payers:
            assert lengths[payer] == list(range(1, len(lengths[payer]) + 1)), f"{payer}: the chain has a gap or a repeat"
    finally:
        await connection.close()

    # Every sequence of every chain on ledger.posted, each with the hash the journal holds.
    records = await log.read_topic(world.settings.bootstrap_servers or "", LEDGER_POSTED.name, expected=events_count,
                                     idle_timeout_s=5.0, distinct=lambda value: _ours(value, world.prefix))
    published: dict[str, set[int]] = defaultdict(set)
    for record in records:
        event = orjson.loads(record.value)
        if event["chain"].startswith(world.prefix):
            published[event["chain"]].add(event["sequence"])
    for payer in payers:
        assert published[payer] == set(range(1, len(lengths[payer]) + 1)), f"{payer}: ledger.posted misses sequences"
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        for payer in payers:
            report = await verify.verify(pool, world.settings.bootstrap_servers, scope=payer, idle_timeout_s=5.0)
            assert report.ok, report.violations[:5]
    finally:
        await pool.close()


def _ours(value: bytes, prefix: str) -> tuple[str, int] | None:
    event = orjson.loads(value)
    return (event["chain"], event["sequence"]) if event["chain"].startswith(prefix) else None


async def test_two_kills_lose_and_duplicate_nothing(backend) -> None:
    await _run(backend, 3_000, ["ledger.after_db_commit:1", "random"], seed=11)


@pytest.mark.soak
async def test_ten_kills_while_fifty_thousand_events_flow(backend) -> None:
    kills = ["ledger.mid_batch:2", "random", "ledger.after_db_commit:1", "ledger.before_outbox_publish:3", "random",
             "ledger.mid_batch:1", "ledger.after_db_commit:4", "random", "ledger.before_outbox_publish:1", "random"]
    await _run(backend, 50_000, kills, seed=5)
