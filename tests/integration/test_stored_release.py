"""Payloads written raw by the release before they were stored compressed,
read by this one (contracts/stored.py): nothing is rewritten, every reader
gets the same canonical bytes, figures and verdicts from the old rows, new
rows are written packed beside them, and the two are read together.

`tests/fixtures/release_0036.dump` is that release's data, made by
`tests/fixtures/make_release_dump.py` at 9544002 (its last migration 0036):
usage from Kafka and over HTTP, a funding split, bad usage, parked
consumption (half of it priced later) and a retroactive book repriced
(reversals and corrections), every payload stored as canonical JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import asyncpg
import orjson
import pytest

from tests.integration import releases
from tokenhub.audit import replay, restore, statement, verify
from tokenhub.client import usage_event
from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.periods import containing
from tokenhub.contracts.stored import ZSTD_MAGIC, unpack
from tokenhub.contracts.topics import LEDGER_POSTED, TOKENS_CONSUMED, USAGE_REPORTED
from tokenhub.infra.migrate import migrate
from tokenhub.services.common.db import create_pool
from tokenhub.services.ledger.adapters import produced as ledger_produced
from tokenhub.services.ledger.adapters import store as ledger_store
from tokenhub.services.ledger.handlers import post_values
from tokenhub.services.metering import domain as metering
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.metering.adapters import produced as metering_produced
from tokenhub.services.metering.adapters import store as metering_store
from tokenhub.services.pricing import domain as pricing
from tokenhub.services.pricing.adapters import produced as pricing_produced
from tokenhub.services.pricing.adapters import store as pricing_store

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_0036.dump"
RELEASE_MIGRATION = "0036"
ZONE = "Asia/Shanghai"

# The release's own queries over raw payloads, which PostgreSQL could parse:
# what the new code, which reads packed payloads in Python or from a column,
# must still answer on the same rows.
RELEASE_TOKENS_BY_CLASS = """
select token.key as token_class, string_agg(distinct consumed.payload ->> 'model', ', ' order by consumed.payload ->> 'model') as models,
       sum(token.value::bigint) as tokens
from (select convert_from(payload, 'UTF8')::jsonb as payload from metering.consumed) consumed,
     jsonb_each_text(consumed.payload -> 'tokens') token
group by token.key order by tokens desc, token_class
"""
RELEASE_FUNDING_SHARES = """
select payload ->> 'funding_agreement_id' as agreement, payload ->> 'consumer_bu' as consumer_bu,
       payload ->> 'payer_bu' as payer_bu, payload ->> 'share_percent' as share, count(*) as events,
       sum((select sum(value::bigint) from jsonb_each_text(payload -> 'tokens'))) as tokens
from (select convert_from(payload, 'UTF8')::jsonb as payload from metering.consumed) consumed
where payload ? 'funding_agreement_id'
group by 1, 2, 3, 4 order by 1, 3
"""
RELEASE_FUNDED_APPS = """
select array_remove(array_agg(distinct convert_from(priced, 'UTF8')::jsonb ->> 'app' order by convert_from(priced, 'UTF8')::jsonb ->> 'app'), null)
from ledger.journal where chain = $1 and event_time >= $2 and event_time < $3
"""


@pytest.fixture
async def release_database(backend, tmp_path: Path) -> AsyncIterator[str]:
    """A new database in the test cluster with the release's schema and data."""
    async with releases.release_database(backend.settings.database_url, tmp_path, RELEASE_MIGRATION, FIXTURE,
                                         "raw", ("_restored",)) as url:
        yield url


async def test_raw_rows_of_the_release_read_replay_verify_and_restore_as_before_beside_packed_new_ones(
        release_database: str) -> None:
    connection = await asyncpg.connect(release_database)
    try:
        # --- the release's rows: canonical JSON, and what its own SQL made of them -----------------
        consumed = await connection.fetch("select usage_value, payload from metering.consumed order by seq")
        priced = [bytes(row["payload"]) for row in await connection.fetch("select payload from pricing.priced order by seq")]
        journal = await connection.fetch("select chain, sequence, event_time, entry_hash, priced from ledger.journal "
                                         "order by chain, sequence")
        stored_before = [bytes(row["payload"]) for row in consumed] + priced + [bytes(row["priced"]) for row in journal]
        assert (len(consumed), len(priced), len(journal)) == (64, 182, 182)
        assert all(value[:1] == b"{" for value in stored_before)
        usage_values = [bytes(row["usage_value"]) for row in consumed if row["usage_value"] is not None]
        assert len(usage_values) == 3  # the usage that came over HTTP
        by_class = [tuple(row) for row in await connection.fetch(RELEASE_TOKENS_BY_CLASS)]
        shares = [tuple(row) for row in await connection.fetch(RELEASE_FUNDING_SHARES)]
        assert len(by_class) >= 2 and len(shares) == 2
        months = sorted({(row["chain"], containing(row["event_time"], "month", ZONE)) for row in journal})
        funded_apps = {key: await connection.fetchval(RELEASE_FUNDED_APPS, key[0], key[1].start, key[1].end)
                       for key in months}
        heads = [tuple(row) for row in await connection.fetch("select * from ledger.chains order by chain")]

        await migrate(release_database)

        # Nothing rewritten: the same bytes, and no app in the new column.
        assert [bytes(row["payload"]) for row in await connection.fetch("select payload from metering.consumed order by seq")] \
            + [bytes(row["payload"]) for row in await connection.fetch("select payload from pricing.priced order by seq")] \
            + [bytes(row["priced"]) for row in await connection.fetch("select priced from ledger.journal order by chain, sequence")] \
            == stored_before
        assert await connection.fetchval("select count(*) from ledger.journal where app is not null") == 0

        # --- read: what each service republishes is the canonical bytes it published --------------
        metering_records = [record async for record in metering_produced.produced_records(connection)]
        assert [value for topic, _, value, _ in metering_records if topic == TOKENS_CONSUMED.name] == [
            bytes(row["payload"]) for row in consumed]
        assert [value for topic, _, value, _ in metering_records if topic == USAGE_REPORTED.name] == usage_values
        pricing_records = [record async for record in pricing_produced.produced_records(connection)]
        assert [value for topic, _, value, _ in pricing_records] == priced
        ledger_records = [record async for record in ledger_produced.produced_records(connection)]  # each held to its hash
        assert [orjson.loads(value)["entry_hash"] for topic, _, value, _ in ledger_records if topic == LEDGER_POSTED.name] == [
            row["entry_hash"].hex() for row in journal]
        funded = {key: await connection.fetchrow(ledger_store.SELECT_FUNDED, key[0], key[1].start, key[1].end, "*")
                  for key in months}
        assert {key: list(row["apps"]) for key, row in funded.items()} == funded_apps
    finally:
        await connection.close()

    pool = await create_pool(release_database, size_max=2)
    try:
        # --- the figures the release's SQL gave, now summed from the payloads in Python ---------------
        assert [(row.token_class, row.models, row.tokens) for row in await metering_queries.tokens_by_class(pool)] == by_class
        assert [(row.agreement, row.consumer_bu, row.payer_bu, row.share_percent, row.events, row.tokens)
                for row in await metering_queries.funding_shares(pool)] == shares

        # --- replay, verify, statement over the raw rows ---------------------------------------------
        replayed = await replay.replay(pool, None, source="archive", with_reprice=True)
        assert replayed.ok and replayed.events == 182 and replayed.repricing is not None
        assert len(replayed.repricing.amounts) == 182
        verified = await verify.verify(pool, None, zone=ZONE)
        assert verified.ok, verified.violations
        assert next(check for check in verified.checks if check.name == "chains").examined == 182
        payer = "release-alpha"
        month = months[0][1]
        lines = (await statement.statement(pool, payer, month.start, month.end + timedelta(days=62))).lines
        assert len(lines) == sum(row["chain"] == payer for row in journal) > 0

        # --- a new usage event through metering, pricing and the ledger's stores: packed rows -------------
        new_payer = "release-shop"
        async with pool.acquire() as connection:
            last_time = await connection.fetchval("select max(event_time) from ledger.journal where chain = $1", new_payer)
        moment = last_time + timedelta(minutes=1)
        usage = usage_event("tests/release-packed", "req-packed-1", moment, {
            "consumer_bu": new_payer, "model": "release-qwen-max", "app": "packed-app",
            "input_tokens": 1_234, "output_tokens": 56})
        async with metering_store.MeteringStore(lambda: pool).unit() as unit:
            limits = metering.Limits(moment, timedelta(days=35), timedelta(minutes=5), 65_536)
            metered = metering.meter(metering.RawUsage(canonical_json(usage)), await unit.catalogue(), limits)
            payloads = tuple(codecs.encode(event) for event in metered.consumed)
            claims = await unit.claim([metering_store.Produced(metered, payloads)])
        assert claims.claimed == {metering.key_of(metered)} and len(payloads) == 1
        async with pricing_store.PricingStore(lambda: pool).unit(books="shared") as unit:
            charge = pricing.price_in_force(codecs.decode_consumed(payloads[0]), await unit.books())
            assert await unit.save_priced([(charge, metered.consumed[0].request_input_tokens)]) == [charge]
        charge_bytes = codecs.encode_priced(charge)
        async with pool.acquire() as connection, connection.transaction():
            outcome = await post_values(ledger_store.LedgerUnit(connection), [charge_bytes], now=moment + timedelta(seconds=2),
                                        zone=ZONE)
        assert len(outcome.posted) == 1

        async with pool.acquire() as connection:
            new_consumed = await connection.fetchval("select payload from metering.consumed where usage_source = $1",
                                                     "tests/release-packed")
            new_priced = await connection.fetchval("select payload from pricing.priced where priced_id = $1", charge.id)
            new_entry = await connection.fetchrow("select priced, app from ledger.journal where priced_id = $1", charge.id)
            assert [value[:4] for value in (new_consumed, new_priced, new_entry["priced"])] == [ZSTD_MAGIC] * 3
            assert len(new_entry["priced"]) < len(charge_bytes) / 2
            assert (unpack(new_consumed), unpack(new_priced), unpack(new_entry["priced"])) == (
                payloads[0], charge_bytes, charge_bytes)
            assert new_entry["app"] == "packed-app"
            # Old and new rows read together, in production order.
            metering_after = [value async for topic, _, value, _ in metering_produced.produced_records(connection)
                              if topic == TOKENS_CONSUMED.name]
            assert metering_after == [bytes(row["payload"]) for row in consumed] + [payloads[0]]
            assert [value async for _, _, value, _ in pricing_produced.produced_records(connection)] == priced + [charge_bytes]
            assert len([record async for record in ledger_produced.produced_records(connection)
                        if record[0] == LEDGER_POSTED.name]) == 183
            new_month = containing(moment, "month", ZONE)
            funded_now = await connection.fetchrow(ledger_store.SELECT_FUNDED, new_payer, new_month.start, new_month.end, "*")
            assert "packed-app" in funded_now["apps"]
            assert set(funded_now["apps"]) - {"packed-app"} == set(funded_apps.get((new_payer, new_month), []))

        # The payer's chain, raw entries then a packed one, verifies as one chain (the whole
        # database's counters did not see the event, so the scope is its payer's; invoicing
        # never received its LedgerPosted, so invoicing's totals are one posting behind).
        verified = await verify.verify(pool, None, scope=new_payer, zone=ZONE)
        assert [check.name for check in verified.checks if not check.ok] == ["invariant-5"]
        assert [violation.detail.endswith("(in flight: verify a settled pipeline)")
                for violation in verified.violations] == [True]
        replayed = await replay.replay(pool, None, source="archive")
        assert replayed.ok and replayed.events == 183
        assert replayed.rebuilt[new_payer]["spend"] == replayed.projected[new_payer]["spend"] > Decimal(charge.total_amount)

        # --- restore from the archive into an empty database: every row packed, the same chains -----------
        target = release_database.replace(urlparse(release_database).path, urlparse(release_database).path + "_restored")
        report = await restore.restore(pool, target, None, source="archive", now=moment + timedelta(minutes=1), zone=ZONE)
        assert (report.priced, report.posted, report.conflicts) == (183, 183, 0)
        restored = await asyncpg.connect(target)
        try:
            assert await restored.fetchval("select count(*) from ledger.journal where substring(priced for 4) = $1",
                                           ZSTD_MAGIC) == 183
            restored_heads = [tuple(row) for row in await restored.fetch("select * from ledger.chains order by chain")]
            restored_balances = await replay.projection(restored, None)
        finally:
            await restored.close()
        async with pool.acquire() as connection:
            assert restored_heads == [tuple(row) for row in await connection.fetch("select * from ledger.chains order by chain")]
            assert restored_balances == await replay.projection(connection, None)
        assert [head for head in heads if head[0] != new_payer] == [head for head in restored_heads if head[0] != new_payer]
    finally:
        await pool.close()
