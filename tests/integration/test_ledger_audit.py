"""Replay, verify and restore on the real stack: replay equals the projection
at five as-of times from the topic and from the journal and repricing agrees;
a corrupted projection row is named; a journal row rewritten with SQL, even
with every later hash recomputed, is named by verify; a conflicting duplicate
posts nothing and raises an alert; a restored ledger has the same balances;
the database holds each journal row to the chart of accounts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from tests.integration.support import World, delta, emit, publish_events, read_counters, wait_settled
from tokenhub.audit import balances, log, replay, restore, verify
from tokenhub.contracts.stored import unpack
from tokenhub.contracts.topics import BUDGET_ALERTS, LEDGER_POSTED, TOKENS_PRICED
from tokenhub.infra.migrate import migrate
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.common.db import create_pool

pytestmark = pytest.mark.asyncio(loop_scope="session")
HOUR = timedelta(hours=1)


async def _wait_published(settings, payer: str) -> None:  # noqa: ANN001
    """Every entry of the payer's chain relayed from the outbox."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        async def relayed() -> bool:
            return not await connection.fetchval(
                "select count(*) from ledger.outbox, unnest(topics, keys) as staged(topic, key) where topic = $1 and key = $2", LEDGER_POSTED.name, payer.encode())
        await wait_until(relayed, 30, "the ledger's outbox to drain")
    finally:
        await connection.close()


async def _settled_world(backend, count: int = 40) -> tuple[World, datetime, list[tuple[str, datetime, int, int]]]:  # noqa: ANN001
    """Usage of two consumers spread over the last ten hours, settled."""
    world = World(backend.settings)
    await world.publish(["shop", "maps"])
    now = datetime.now(UTC).replace(microsecond=0)
    plan = [("shop" if index % 3 else "maps", now - (10 - index % 10) * HOUR + timedelta(minutes=index),
             10_000 + 97 * index, 1_000 + 13 * index) for index in range(count)]
    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage(consumer, index, tokens_in, tokens_out, time=moment)
                                for index, (consumer, moment, tokens_in, tokens_out) in enumerate(plan)])
    await wait_settled(world.settings, before, count)
    for consumer in ("shop", "maps"):
        await _wait_published(world.settings, world.bu(consumer))
    return world, now, plan


async def test_replay_equals_the_projection_at_five_times_from_topic_and_archive_and_repricing_agrees(backend) -> None:
    world, now, plan = await _settled_world(backend)
    as_of_times = [now - 9 * HOUR - 30 * timedelta(minutes=1), now - 6 * HOUR, now - 3 * HOUR - 7 * timedelta(minutes=1),
                   now - HOUR, now]
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        for source in ("topic", "archive"):
            for as_of in as_of_times:
                report = await replay.replay(pool, world.settings.bootstrap_servers, source=source, as_of=as_of,
                                            with_reprice=True)
                assert report.differences == [], (source, as_of, report.differences)
                assert report.repricing is not None
                assert report.repricing.mismatches == [] and report.repricing.unrecomputable == []
                assert report.repriced_differences == []
                assert report.ok
                # ... and to the last digit, the sums of the emitted usage computed by hand
                for consumer in ("shop", "maps"):
                    expected = sum((world.expected_amount(tokens_in, tokens_out) for who, moment, tokens_in, tokens_out in plan
                                    if who == consumer and moment <= as_of), Decimal(0))
                    tokens = sum(tokens_in + tokens_out for who, moment, tokens_in, tokens_out in plan
                                 if who == consumer and moment <= as_of)
                    figures = report.rebuilt.get(world.bu(consumer), dict.fromkeys(balances.FIGURES, Decimal(0)))
                    assert figures["spend"] == expected, (source, as_of, consumer)
                    assert figures["tokens_consumed"] == tokens
            assert sum(1 for _, moment, _, _ in plan if moment <= as_of_times[0]) == 4  # the first as-of splits the data
    finally:
        await pool.close()


async def test_a_corrupted_projection_row_makes_replay_fail_and_name_it(backend) -> None:
    world, _, _ = await _settled_world(backend, count=6)
    account = f"bu:{world.provider}:revenue"
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        async with pool.acquire() as connection:
            await connection.execute("update ledger.balances set credit_total = credit_total - 0.000000000007 "
                                     "where ledger = 'money' and account = $1", account)
        try:
            for source in ("topic", "archive"):
                broken = await replay.replay(pool, world.settings.bootstrap_servers, source=source)
                assert not broken.ok
                assert [(difference.bu, difference.figure) for difference in broken.differences] == [(world.provider, "revenue")]
                assert broken.differences[0].rebuilt - broken.differences[0].projected == Decimal("0.000000000007")
                assert broken.differences[0].row(None) == f"ledger.balances (money, {account})"
            report = await verify.verify(pool, world.settings.bootstrap_servers, scope=world.provider)
            projection = next(check for check in report.checks if check.name == "invariant-3")
            assert [violation.subject for violation in projection.violations] == [f"ledger.balances (money, {account})"]
        finally:
            async with pool.acquire() as connection:
                await connection.execute("update ledger.balances set credit_total = credit_total + 0.000000000007 "
                                         "where ledger = 'money' and account = $1", account)
        assert (await replay.replay(pool, world.settings.bootstrap_servers, source="archive")).ok
    finally:
        await pool.close()


def _forge(rows: list[asyncpg.Record], from_sequence: int, amount_delta: Decimal) -> list[tuple[uuid.UUID, bytes, Decimal, bytes]]:
    """What a careful forger computes: one entry's Priced raised by `amount_delta`,
    and it and every later entry re-hashed. (priced id, Priced bytes, amount, hash)"""
    rewritten = []
    previous_hash = ""
    for row in rows:
        if row["sequence"] < from_sequence:
            previous_hash = row["entry_hash"].hex()
            continue
        priced = orjson.loads(unpack(row["priced"]))
        amount = row["amount"]
        if row["sequence"] == from_sequence:
            priced["lines"][0]["amount"] = f"{Decimal(priced['lines'][0]['amount']) + amount_delta:.12f}"
            priced["total_amount"] = f"{Decimal(priced['total_amount']) + amount_delta:.12f}"
            amount += amount_delta
        forged = orjson.dumps(priced, option=orjson.OPT_SORT_KEYS)
        content = verify.entry_content(forged, row["chain"], row["sequence"], previous_hash, row["posted_at"])
        previous_hash = verify.entry_hash(content, previous_hash)
        rewritten.append((row["priced_id"], forged, amount, bytes.fromhex(previous_hash)))
    return rewritten


async def test_a_journal_row_rewritten_with_sql_is_named_by_verify_even_when_every_later_hash_is_recomputed(backend) -> None:
    world, _, _ = await _settled_world(backend, count=9)
    payer = world.bu("shop")
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    connection = await asyncpg.connect(world.settings.database_url)
    originals = await connection.fetch("select * from ledger.journal where chain = $1 order by sequence", payer)
    head = await connection.fetchrow("select * from ledger.chains where chain = $1", payer)
    target = originals[2]
    target_name = verify.row_name(payer, 3, target["priced_id"])
    delta_amount = Decimal("1.5")
    try:
        clean = await verify.verify(pool, world.settings.bootstrap_servers, scope=payer)
        assert clean.ok, clean.violations
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await connection.execute("update ledger.journal set amount = amount + 1 where priced_id = $1", target["priced_id"])

        # A forger with superuser rights bypasses the triggers and raises one entry's amount, nothing else.
        async with connection.transaction():
            await connection.execute("set local session_replication_role = replica")
            await connection.execute("update ledger.journal set amount = amount + $2 where priced_id = $1",
                                     target["priced_id"], delta_amount)
        naive = await verify.verify(pool, world.settings.bootstrap_servers, scope=payer)
        assert not naive.ok
        by_check = {check.name: check for check in naive.checks}
        assert by_check["chains"].ok, "the hash covers the Priced, which was not touched"
        assert [(violation.subject, violation.detail) for violation in by_check["invariant-2"].violations] == [
            (target_name, "does not post what its Priced says: money differ")]
        assert {violation.subject for violation in by_check["invariant-3"].violations} == {
            f"ledger.balances (money, bu:{payer}:spend)"}

        # A careful forger raises the Priced in the row too, re-hashes it and every later entry, and fixes the head
        # and the balances.
        forged = _forge(list(originals), 3, delta_amount)
        async with connection.transaction():
            await connection.execute("set local session_replication_role = replica")
            for priced_id, priced, amount, entry_hash in forged:
                await connection.execute("update ledger.journal set priced = $2, amount = $3, entry_hash = $4 "
                                         "where priced_id = $1", priced_id, priced, amount, entry_hash)
            await connection.execute("update ledger.chains set head_hash = $2 where chain = $1", payer, forged[-1][3].hex())
            await connection.execute("update ledger.balances set debit_total = debit_total + $2 where account = $1",
                                     f"bu:{payer}:spend", delta_amount)
            await connection.execute("update ledger.balances set credit_total = credit_total + $2 where account = $1",
                                     f"bu:{world.provider}:revenue", delta_amount)
        careful = await verify.verify(pool, world.settings.bootstrap_servers, scope=payer)
        assert not careful.ok
        by_check = {check.name: check for check in careful.checks}
        assert by_check["chains"].ok and by_check["invariant-1"].ok and by_check["invariant-2"].ok  # internally consistent
        assert by_check["invariant-3"].ok
        published = by_check["published"].violations
        assert published[0].subject == target_name and published[0].detail.startswith("REWRITTEN")
        assert all(field in published[0].detail for field in ("amount", "lines", "postings"))
        assert [violation.subject for violation in published[1:]] == [
            verify.row_name(payer, row["sequence"], row["priced_id"]) for row in originals[3:]]
        assert all("re-hashed" in violation.detail for violation in published[1:])
        # The raised Priced is not what its TokenConsumed and price book give.
        assert [violation.subject for violation in by_check["invariant-4"].violations] == [target_name]
    finally:
        async with connection.transaction():
            await connection.execute("set local session_replication_role = replica")
            for row in originals:
                await connection.execute("update ledger.journal set priced = $2, amount = $3, entry_hash = $4 "
                                         "where priced_id = $1", row["priced_id"], row["priced"], row["amount"], row["entry_hash"])
            await connection.execute("update ledger.chains set head_hash = $2 where chain = $1", payer, head["head_hash"])
            await connection.execute("update ledger.balances b set debit_total = j.debit_total, credit_total = j.credit_total "
                                     f"from ({verify.SELECT_JOURNAL_TOTALS}) j where b.ledger = j.ledger and b.account = j.account "
                                     "and b.account = any($1::text[])", [f"bu:{payer}:spend", f"bu:{world.provider}:revenue"])
        await connection.close()
    try:
        assert (await verify.verify(pool, world.settings.bootstrap_servers, scope=payer)).ok
    finally:
        await pool.close()


async def test_a_conflicting_duplicate_posts_nothing_and_raises_one_alert(backend) -> None:
    world, _, _ = await _settled_world(backend, count=3)
    payer = world.bu("shop")
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        original = unpack(await connection.fetchval(
            "select priced from ledger.journal where chain = $1 order by sequence limit 1", payer))
        spend_before = await connection.fetchval("select debit_total from ledger.balances where account = $1", f"bu:{payer}:spend")
        forged = orjson.loads(original)
        forged["lines"][0]["amount"] = f"{Decimal(forged['lines'][0]['amount']) + 1:.12f}"
        forged["total_amount"] = f"{Decimal(forged['total_amount']) + 1:.12f}"
        before = await read_counters(world.settings)
        copy = orjson.dumps(forged, option=orjson.OPT_SORT_KEYS)
        await publish_events(world.settings, TOKENS_PRICED.name, [(payer.encode(), copy), (payer.encode(), copy), (payer.encode(), original)])

        async def seen() -> bool:
            counts = await read_counters(world.settings)
            return delta(counts, before, "ledger.conflicts") + delta(counts, before, "ledger.duplicates") == 3
        await wait_until(seen, 30, "the ledger to receive the copies")
        after = await read_counters(world.settings)
        assert (delta(after, before, "ledger.conflicts"), delta(after, before, "ledger.duplicates"), delta(after, before, "ledger.posted")) == (2, 1, 0)
        assert await connection.fetchval("select debit_total from ledger.balances where account = $1", f"bu:{payer}:spend") == spend_before
        alerts = await connection.fetch("select detail, payload from ledger.alerts "
                                        "where kind = 'conflicting_duplicate' and detail ->> 'priced_id' = $1", forged["id"])
        assert len(alerts) == 1
    finally:
        await connection.close()
    records = await log.read_topic(world.settings.bootstrap_servers or "", BUDGET_ALERTS.name, idle_timeout_s=1.5)
    raised = [record.value for record in records if orjson.loads(record.value).get("priced_id") == forged["id"]]
    assert [(orjson.loads(alert)["type"], orjson.loads(alert)["payer_bu"]) for alert in raised] == [
        ("ledger.conflicting_duplicate", payer)]
    assert raised == [alerts[0]["payload"]], "stored as published, so a republish sends the same bytes"


async def test_restore_rebuilds_the_ledger_into_an_empty_database_with_equal_balances(backend) -> None:
    world, now, _ = await _settled_world(backend, count=12)
    admin = await asyncpg.connect(world.settings.database_url)
    names = [f"restore_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        for name in names:
            await admin.execute(f"create database {name}")
        for name, source in zip(names, ("archive", "topic"), strict=True):
            target_url = (world.settings.database_url or "").replace("/tokenhub?", f"/{name}?")
            assert target_url != world.settings.database_url
            await migrate(target_url)
            report = await restore.restore(pool, target_url, world.settings.bootstrap_servers, source=source, now=now,
                                         zone=world.settings.timezone)
            chains_query = ("select chain, sequence, priced_id, posted_at, entry_hash from ledger.journal "
                            "where chain = any($1::text[]) order by chain, sequence")
            payers = [world.bu("shop"), world.bu("maps")]
            # Entries marked over quota (test_quota_state's, when it ran before) keep their mark and hash.
            marked_query = "select chain, sequence, entry_hash from ledger.journal where overage order by chain, sequence"
            async with pool.acquire() as connection:
                original = await replay.projection(connection, None)
                entries = await connection.fetchval("select count(*) from ledger.journal")
                original_chains = [tuple(row) for row in await connection.fetch(chains_query, payers)]
                original_marked = [tuple(row) for row in await connection.fetch(marked_query)]
            restored_pool = await create_pool(target_url, size_max=1)
            try:
                async with restored_pool.acquire() as connection:
                    restored = await replay.projection(connection, None)
                    restored_entries = await connection.fetchval("select count(*) from ledger.journal")
                    outbox = await connection.fetchval("select count(*) from ledger.outbox")
                    restored_chains = [tuple(row) for row in await connection.fetch(chains_query, payers)]
                    restored_marked = [tuple(row) for row in await connection.fetch(marked_query)]
                restored_report = await verify.verify(restored_pool, world.settings.bootstrap_servers,
                                                            scope=world.bu("shop"))
            finally:
                await restored_pool.close()
            assert report.posted == entries == restored_entries, source
            assert restored == original, source
            assert restored[world.bu("shop")]["spend"] == original[world.bu("shop")]["spend"] > 0
            assert outbox == 0
            # Entry for entry: same sequences, posting times and hashes, so the heads published and on invoices hold.
            assert len(original_chains) == 12 and restored_chains == original_chains, source
            assert restored_marked == original_marked, source
            by_check = {check.name: check for check in restored_report.checks}
            assert by_check["chains"].ok and by_check["chains"].examined > 0
            assert by_check["published"].ok and by_check["published"].examined > 0, by_check["published"].violations[:3]
    finally:
        await pool.close()
        for name in names:
            await admin.execute(f"drop database if exists {name} with (force)")
        await admin.close()


async def test_a_journal_row_is_two_transfers_of_the_payers_chain_and_the_journal_is_append_only(backend) -> None:
    world, _, _ = await _settled_world(backend, count=2)
    connection = await asyncpg.connect(world.settings.database_url)
    payer, provider = world.bu("shop"), world.provider
    try:
        entry = await connection.fetchrow("select * from ledger.journal where chain = $1 order by sequence limit 1", payer)
        entries = await connection.fetchval("select count(*) from ledger.journal where chain = $1", payer)
        assert (entry["money_debit"], entry["money_credit"], entry["tokens_debit"], entry["tokens_credit"]) == (
            f"bu:{payer}:spend", f"bu:{provider}:revenue", f"bu:{payer}:consumed", f"bu:{provider}:served")
        columns = [name for name in entry.keys() if name not in ("priced_id", "sequence")]
        insert = (f"insert into ledger.journal (priced_id, sequence, {', '.join(columns)}) "
                  f"values ($1, 1000, {', '.join(f'${index + 2}' for index in range(len(columns)))})")
        broken = {
            "journal_money_accounts": {"money_credit": f"bu:{provider}:served"},
            "journal_tokens_accounts": {"tokens_debit": f"bu:{payer}:spend"},
            "journal_chain_is_the_payer": {"chain": provider},
            "journal_one_provider": {"money_credit": f"bu:{world.bu('maps')}:revenue"},
            "journal_amount_check": {"amount": Decimal("-0.000000000001")},
            "journal_entry_hash_check": {"entry_hash": b"short"},
        }
        for constraint, change in broken.items():
            values = {**{name: entry[name] for name in columns}, **change}
            with pytest.raises(asyncpg.CheckViolationError, match=constraint):
                await connection.execute(insert, uuid.uuid4(), *(values[name] for name in columns))
        with pytest.raises(asyncpg.UniqueViolationError, match="journal_chain_sequence"):
            await connection.execute(insert.replace("1000", "1"), uuid.uuid4(), *(entry[name] for name in columns))
        for statement in ("delete from ledger.journal where priced_id = $1",
                          "update ledger.journal set priced = priced where priced_id = $1"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await connection.execute(statement, entry["priced_id"])
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await connection.execute("truncate ledger.journal")
        assert await connection.fetchval("select count(*) from ledger.journal where chain = $1", payer) == entries
    finally:
        await connection.close()


async def test_a_priced_that_pricing_published_and_the_ledger_never_posted_is_named_by_verify(backend) -> None:
    world, _, _ = await _settled_world(backend, count=3)
    payer = world.bu("shop")
    lost = uuid.uuid4()
    pool = await create_pool(world.settings.database_url or "", size_max=2)
    try:
        async with pool.acquire() as connection:
            # A copy of one of the payer's Priced under an id the journal has not posted, as if its posting were lost.
            # (payloads are stored packed: the payer's is found by reading them back)
            ours = [row["priced_id"] for row in await connection.fetch(
                "select priced_id, payload from pricing.priced where model = $1", world.model)
                    if orjson.loads(unpack(row["payload"]))["payer_bu"] == payer]
            await connection.execute(
                "insert into pricing.priced (priced_id, kind, event_time, model, request_input_tokens, payload) "
                "select $1, kind, event_time, model, request_input_tokens, payload from pricing.priced "
                "where priced_id = $2", lost, ours[0])
        try:
            report = await verify.verify(pool, world.settings.bootstrap_servers, scope=payer)
            exactly_once = next(check for check in report.checks if check.name == "invariant-2")
            assert [(violation.subject, violation.detail) for violation in exactly_once.violations] == [
                (f"Priced {lost}", "published by pricing but not posted (lost, or in flight: verify a settled pipeline)")]
            # Another payer's verify does not see it.
            other = await verify.verify(pool, world.settings.bootstrap_servers, scope=world.bu("maps"))
            assert next(check for check in other.checks if check.name == "invariant-2").ok
        finally:
            async with pool.acquire() as connection:
                await connection.execute("delete from pricing.priced where priced_id = $1", lost)
    finally:
        await pool.close()
