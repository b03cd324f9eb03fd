"""20,000 usage events through the pipeline on the three-node cluster, two
instances of every service sharing the work, and one Kafka node SIGKILLed in
the middle of the run and restarted while events still flow. Afterwards:
nothing lost and nothing counted twice, every balance equal to a tally made
here from the events sent, `verify` and `replay` clean, the killed node back in
sync, and the log itself (not only the database) holding every record."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka.errors import KafkaError

from tests.integration.support import World, emit, read_counters
from tokenhub.audit import log, verify
from tokenhub.audit.replay import replay
from tokenhub.contracts.topics import LEDGER_POSTED, TOKENS_CONSUMED, TOKENS_PRICED, USAGE_REPORTED
from tokenhub.infra.pipeline import Timeout, counters, settled, wait_until
from tokenhub.infra.processes import SERVICES
from tokenhub.infra.topics import admin_client
from tokenhub.services.common.db import create_pool

pytestmark = pytest.mark.asyncio(loop_scope="session")
EVENTS = 20_000
CHUNK = 1_000
CHUNKS_AHEAD_MAX = 2
"""Chunks sent but not yet metered: the emitter keeps pace with the pipeline,
so the kill lands while events are still being produced, not after."""
KILL_AFTER_CHUNKS = 6
RESTART_AFTER_CHUNKS = 11
CONSUMERS = tuple(f"unit{index:02d}" for index in range(16))
"""Usage is keyed by consumer, so the consumers decide which partitions carry work:
with four, all of them landed on one instance's partitions about one run in eight,
and the other instance had nothing to do; with sixteen, about one in 30,000."""
SETTLE_TIMEOUT_S = 240.0
SERVICES_READY_S = 180.0
LOG_READ_IDLE_S = 30.0
"""Each read stops as soon as it has every record it expects; this long without a
record only on a machine so busy that a leader's fetch stalls."""
WORK_LOG_EVENTS = {
    # Each service's one log line per batch, and the field that counts the batch's records.
    "metering": ("usage_metered", "accepted"),
    "pricing": ("consumption_priced", "received"),
    "ledger": ("priced_posted", "received"),
    "invoicing": ("postings_received", "received"),
}


async def _metered(connection: asyncpg.Connection, prefix: str) -> int:
    return await connection.fetchval(
        "select count(*) from metering.consumed where usage_source = $1", f"tests/{prefix}")


async def _leader_of(kafka, topic: str, partition: int) -> int:  # noqa: ANN001
    admin = admin_client(kafka.settings.bootstrap_servers, kafka.settings)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return next(each["leader"] for each in described["partitions"] if each["partition"] == partition)


async def _brokers(kafka) -> set[int] | None:  # noqa: ANN001
    """The brokers the cluster's metadata lists, or None where the node asked was the dead one."""
    admin = admin_client(kafka.settings.bootstrap_servers, kafka.settings)
    try:
        await admin.start()
        return {broker["node_id"] for broker in (await admin.describe_cluster())["brokers"]}
    except KafkaError:
        return None
    finally:
        await admin.close()


async def _out_of_sync(kafka) -> list[str]:  # noqa: ANN001
    """Partitions of Token Hub's busy topics with fewer than three in-sync replicas."""
    topics = [USAGE_REPORTED.name, TOKENS_CONSUMED.name, TOKENS_PRICED.name, LEDGER_POSTED.name]
    admin = admin_client(kafka.settings.bootstrap_servers, kafka.settings)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return [f"{topic['topic']}:{partition['partition']}" for topic in described for partition in topic["partitions"]
            if len(partition["isr"]) < 3]


async def _publish(world: World) -> None:
    """The world's registry and price book. Eight service processes joining their
    groups on a busy machine may take longer than the helper's own wait."""
    deadline = time.monotonic() + SERVICES_READY_S
    try:
        await world.publish(list(CONSUMERS))
    except Timeout:
        while True:
            try:
                await world.wait_registered(len(CONSUMERS) + 1)
                return
            except Timeout:
                if time.monotonic() > deadline:
                    raise


def _work_per_instance(log_dir: Path) -> dict[str, int]:
    """Records each service instance handled, from its own log."""
    done: dict[str, int] = {}
    for service, (event, field) in WORK_LOG_EVENTS.items():
        for path in sorted(log_dir.glob(f"{service}-*.log")):
            total = 0
            for line in path.read_text(errors="replace").splitlines():
                if f'"{event}"' in line:
                    total += json.loads(line).get(field, 0)
            done[path.stem] = total
    return done


async def test_a_broker_killed_mid_run_loses_and_duplicates_nothing(kafka) -> None:  # noqa: ANN001
    world = World(kafka.settings)
    await _publish(world)
    rng = random.Random(17)
    start = datetime.now(UTC) - timedelta(hours=3)
    plan = [(CONSUMERS[index % len(CONSUMERS)], rng.randint(1, 300_000), rng.randint(0, 30_000)) for index in range(EVENTS)]
    usage = [world.usage(consumer, index, tokens_in, tokens_out, time=start + timedelta(milliseconds=index))
             for index, (consumer, tokens_in, tokens_out) in enumerate(plan)]
    victim = await _leader_of(kafka, TOKENS_PRICED.name, 0)
    connection = await asyncpg.connect(world.settings.database_url)
    began = time.monotonic()
    timeline: dict[str, float] = {}
    try:
        before = await read_counters(world.settings)
        for chunk in range(EVENTS // CHUNK):
            if chunk == KILL_AFTER_CHUNKS:
                await asyncio.to_thread(kafka.cluster.kill, victim)
                timeline["killed"] = time.monotonic() - began

                async def fenced() -> bool:
                    brokers = await _brokers(kafka)
                    return brokers is not None and victim not in brokers
                await wait_until(fenced, 60, f"node {victim} to leave the cluster's brokers")
                timeline["fenced"] = time.monotonic() - began
            if chunk == RESTART_AFTER_CHUNKS:
                await asyncio.to_thread(kafka.cluster.restart, victim)
                timeline["restarted"] = time.monotonic() - began
            target = (chunk - CHUNKS_AHEAD_MAX) * CHUNK

            async def caught_up(target: int = target) -> bool:
                return await _metered(connection, world.prefix) >= target
            await wait_until(caught_up, SETTLE_TIMEOUT_S, f"{target} events metered before sending more")
            await emit(world.settings, usage[chunk * CHUNK:(chunk + 1) * CHUNK])
        timeline["sent"] = time.monotonic() - began
        after: dict[str, int] = {}

        async def settled_all() -> bool:
            nonlocal after
            after = await counters(connection)
            return settled({name: value - before.get(name, 0) for name, value in after.items()}, EVENTS)
        await wait_until(settled_all, SETTLE_TIMEOUT_S, f"{EVENTS} usage events to settle")
        timeline["settled"] = time.monotonic() - began

        async def relayed() -> bool:
            return not await connection.fetchval("select count(*) from ledger.outbox")
        await wait_until(relayed, 60, "the ledger's outbox to drain")

        # Nothing lost, nothing twice: one TokenConsumed, one Priced and one journal entry per event.
        assert after["metering.accepted"] - before.get("metering.accepted", 0) == EVENTS
        assert await _metered(connection, world.prefix) == EVENTS
        payers = [world.bu(consumer) for consumer in CONSUMERS]
        entries, distinct = await connection.fetchrow(
            "select count(*), count(distinct priced_id) from ledger.journal where chain = any($1::text[])", payers)
        assert entries == distinct == EVENTS, "no Priced posted twice, none lost"
        chains = {row["chain"]: row["sequences"] for row in await connection.fetch(
            "select chain, array_agg(sequence order by sequence) as sequences from ledger.journal "
            "where chain = any($1::text[]) group by chain", payers)}
        for payer in payers:
            assert chains[payer] == list(range(1, EVENTS // len(CONSUMERS) + 1)), f"{payer}: a gap or a repeat"

        # Balances against a tally of the events sent, made here and nowhere else.
        spend: dict[str, Decimal] = defaultdict(Decimal)
        tokens: dict[str, int] = defaultdict(int)
        for consumer, tokens_in, tokens_out in plan:
            spend[world.bu(consumer)] += world.expected_amount(tokens_in, tokens_out)
            tokens[world.bu(consumer)] += tokens_in + tokens_out
        rows = {row["account"]: row for row in await connection.fetch(
            "select account, debit_total, credit_total from ledger.balances where account like $1", f"bu:{world.prefix}-%")}
        for payer in payers:
            assert rows[f"bu:{payer}:spend"]["debit_total"] - rows[f"bu:{payer}:spend"]["credit_total"] == spend[payer]
            assert rows[f"bu:{payer}:consumed"]["debit_total"] == tokens[payer]
        revenue = rows[f"bu:{world.provider}:revenue"]
        assert revenue["credit_total"] - revenue["debit_total"] == sum(spend.values(), Decimal(0))
        assert rows[f"bu:{world.provider}:served"]["credit_total"] == sum(tokens.values())
    finally:
        await connection.close()

    # The killed node caught up: every partition has its three replicas in sync again.
    async def in_sync() -> bool:
        return not await _out_of_sync(kafka)
    await wait_until(in_sync, 60, "every partition's replicas back in sync")

    # Two instances of every service shared the work.
    work = _work_per_instance(kafka.pipeline.state_dir / "logs")
    for service in SERVICES:
        shares = [work.get(f"{service}-{index}", 0) for index in range(2)]
        assert all(share > 0 for share in shares), f"{service}: one instance did all the work: {shares}"

    # The log is the record: read it back from the cluster itself.
    sent_ids = {event.id for event in usage}
    reported = await log.read_topic(world.settings.bootstrap_servers, USAGE_REPORTED.name, expected=EVENTS,
                                      idle_timeout_s=LOG_READ_IDLE_S, distinct=lambda value: _usage_id(value, world.prefix))
    assert {_usage_id(record.value, world.prefix) for record in reported} - {None} == sent_ids
    priced = await log.read_topic(world.settings.bootstrap_servers, TOKENS_PRICED.name, expected=EVENTS,
                                    idle_timeout_s=LOG_READ_IDLE_S, distinct=lambda value: _priced_id(value, world.prefix))
    priced_ours = [record for record in priced if _priced_id(record.value, world.prefix)]
    assert len({_priced_id(record.value, world.prefix) for record in priced_ours}) == EVENTS
    posted = await log.read_topic(world.settings.bootstrap_servers, LEDGER_POSTED.name, expected=EVENTS,
                                    idle_timeout_s=LOG_READ_IDLE_S, distinct=lambda value: _chain_sequence(value, world.prefix))
    published: dict[str, set[int]] = defaultdict(set)
    for record in posted:
        if (key := _chain_sequence(record.value, world.prefix)) is not None:
            published[key[0]].add(key[1])
    for payer in payers:
        assert published[payer] == set(range(1, EVENTS // len(CONSUMERS) + 1)), f"{payer}: ledger.posted misses sequences"

    # The auditor's recomputation agrees, from the journal and from the topic.
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        report = await verify.verify(pool, world.settings.bootstrap_servers, idle_timeout_s=LOG_READ_IDLE_S)
        assert report.ok, report.violations[:5]
        replayed = await replay(pool, world.settings.bootstrap_servers, source="topic", idle_timeout_s=LOG_READ_IDLE_S)
        assert replayed.ok, replayed.differences[:5]
    finally:
        await pool.close()
    print(f"\nkafka tier: {EVENTS} events, node {victim} killed at {timeline['killed']:.1f} s, fenced at "
          f"{timeline['fenced']:.1f} s, restarted at {timeline['restarted']:.1f} s, all sent at {timeline['sent']:.1f} s, "
          f"settled at {timeline['settled']:.1f} s; cluster start {kafka.start_s:.1f} s; work per instance {work}")


def _usage_id(value: bytes, prefix: str) -> str | None:
    event = orjson.loads(value)
    return event["id"] if event.get("source") == f"tests/{prefix}" else None


def _priced_id(value: bytes, prefix: str) -> str | None:
    event = orjson.loads(value)
    return event["id"] if event["payer_bu"].startswith(prefix) else None


def _chain_sequence(value: bytes, prefix: str) -> tuple[str, int] | None:
    event = orjson.loads(value)
    return (event["chain"], event["sequence"]) if event["chain"].startswith(prefix) else None
