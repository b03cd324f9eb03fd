"""Migrations 0017 and 0018 on a database filled by the release before them
(migration 0016): metering's record of every TokenConsumed replaces its dedup
keys and pricing's archive of TokenConsumed, and pricing's record of every
Priced keeps what repricing needs. Nothing changes a figure: the ledger's
balances, the balances rebuilt from pricing's Priced and every price
recomputed are the same before and after, an old usage event sent again is
still a duplicate, and what each service produced can be read back in order.

The fixture `tests/fixtures/release_0016.dump` is that release's data, made by
`tests/fixtures/make_release_dump.py` at 622a6ab: usage from Kafka and over
HTTP, a funding split, bad usage, parked consumption (half of it priced later)
and a retroactive book repriced (reversals and corrections)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.integration import releases
from tokenhub.audit.balances import PRICED_DECODER, rebuild
from tokenhub.audit.replay import projection
from tokenhub.audit.reprice import load_pricing_inputs, reprice
from tokenhub.client import usage_event
from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import Priced, TokenConsumed, decode
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.topics import TOKENS_CONSUMED, TOKENS_PRICED, USAGE_REJECTED, USAGE_REPORTED
from tokenhub.infra.migrate import migrate
from tokenhub.services.common.db import create_pool
from tokenhub.services.metering import domain as metering
from tokenhub.services.metering.adapters import produced as metering_produced
from tokenhub.services.metering.adapters import store as metering_store
from tokenhub.services.pricing import domain as pricing
from tokenhub.services.pricing.adapters import produced as pricing_produced
from tokenhub.services.pricing.adapters import store as pricing_store
from tokenhub.services.pricing.reprice import consumption_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_0016.dump"
RELEASE_MIGRATION = "0016"


@pytest.fixture
async def release_database(backend, tmp_path: Path) -> AsyncIterator[str]:
    """A new database in the test cluster with the release's schema and data."""
    async with releases.release_database(backend.settings.database_url, tmp_path, RELEASE_MIGRATION, FIXTURE,
                                         "release") as url:
        yield url


def _current_prices(books: BookIndex, consumptions: dict[uuid.UUID, pricing.Consumption]) -> dict[uuid.UUID, bytes]:
    return {consumed_id: canonical_json(pricing.price_in_force(consumption, books))
            for consumed_id, consumption in consumptions.items()}


async def _books(connection: asyncpg.Connection) -> BookIndex:
    return BookIndex.of(await pricing_store.BookCache().load(connection))


async def test_records_replace_archives_and_dedup_keys_without_changing_a_figure(release_database: str) -> None:
    connection = await asyncpg.connect(release_database)
    try:
        # --- the release's state -------------------------------------------------------------
        archived = {row["consumed_id"]: bytes(row["payload"])
                    for row in await connection.fetch("select consumed_id, payload from pricing.consumed_archive")}
        keys = {(row["usage_source"], row["usage_id"]): (row["content_sha256"], row["usage_value"])
                for row in await connection.fetch("select * from metering.dedup")}
        priced_before = [(row["priced_id"], row["kind"], row["superseded_by"], bytes(row["payload"])) for row in
                         await connection.fetch("select * from pricing.priced order by priced_at, priced_id")]
        parked_before = {row["consumed_id"]: (row["model"], row["reason"], archived[row["consumed_id"]])
                         for row in await connection.fetch("select * from pricing.parked")}
        current = [decode(Priced, payload) for _, kind, superseded, payload in priced_before
                   if superseded is None and kind != "reversal"]
        books = await _books(connection)
        prices_before = _current_prices(books, {event.consumed_id: decode(TokenConsumed, archived[event.consumed_id])
                                                for event in current})
        ledger_before = await projection(connection, None)
        rebuilt_before = rebuild(orjson.loads(payload) for *_, payload in priced_before)
        assert (len(archived), len(keys), len(priced_before), len(parked_before)) == (64, 47, 182, 2)

        await migrate(release_database)

        # --- metering: one row per TokenConsumed, keyed by usage, no dedup table ---------------
        assert await connection.fetchval("select to_regclass('metering.dedup')") is None
        assert await connection.fetchval("select to_regclass('pricing.consumed_archive')") is None
        rows = await connection.fetch("select * from metering.consumed order by seq")
        assert sorted(bytes(row["payload"]) for row in rows) == sorted(archived.values())
        firsts = {(row["usage_source"], row["usage_id"]): row for row in rows if row["content_sha256"] is not None}
        assert set(firsts) == set(keys)
        for key, (content_sha256, usage_value) in keys.items():
            assert bytes(firsts[key]["content_sha256"]).hex() == content_sha256
            assert firsts[key]["usage_value"] == usage_value
        assert sum(row["usage_value"] is not None for row in firsts.values()) == 3  # the HTTP usage

        # An old event sent again is still a duplicate: rebuilt from its record, metered by the
        # core, claimed against the migrated store, it meets its key with the same content.
        pool = await create_pool(release_database, size_max=2)
        try:
            async with metering_store.MeteringStore(lambda: pool).unit() as unit:
                catalogue = await unit.catalogue()
                resent = []
                for row in firsts.values():
                    consumed = decode(TokenConsumed, row["payload"])
                    data = {"consumer_bu": consumed.consumer_bu, "model": consumed.model,
                            **{name: int(value) for name, value in consumed.raw_units.items()}}
                    usage = usage_event(consumed.usage_source, consumed.usage_id, consumed.event_time, data)
                    limits = metering.Limits(consumed.event_time, timedelta(days=35), timedelta(minutes=5), 65_536)
                    resent.append(metering.meter(metering.RawUsage(canonical_json(usage)), catalogue, limits))
                claims = await unit.claim([metering_store.Produced(item, tuple(codecs.encode(event) for event in item.consumed))
                                           for item in resent])
            assert claims.claimed == set()
            assert {key: stored.content_sha256 for key, stored in claims.stored.items()} == {
                metering.key_of(item): item.content_sha256 for item in resent}
        finally:
            await pool.close()

        # --- pricing: one row per Priced, the same bytes; parked keeps its input -----------------
        priced_after = [(row["priced_id"], row["kind"], row["superseded_by"], bytes(row["payload"]))
                        for row in await connection.fetch("select * from pricing.priced order by seq")]
        assert priced_after == priced_before
        parked_after = {row["consumed_id"]: (row["model"], row["reason"], bytes(row["payload"]))
                        for row in await connection.fetch("select * from pricing.parked")}
        assert parked_after == parked_before
        request_input = {row["priced_id"]: row["request_input_tokens"]
                         for row in await connection.fetch("select priced_id, request_input_tokens from pricing.priced")}
        for priced_id, *_, payload in priced_after:
            event = decode(Priced, payload)
            assert request_input[priced_id] == decode(TokenConsumed, archived[event.consumed_id]).request_input_tokens

        # Pricing's recomputation is the same: from the consumption its record keeps, through the
        # store's own reprice query, and the auditor's check against metering's record.
        books = await _books(connection)
        prices_after = _current_prices(books, {event.consumed_id: consumption_of(event, request_input[event.id])
                                               for event in current})
        assert prices_after == prices_before
        pool = await create_pool(release_database, size_max=2)
        try:
            async with pricing_store.PricingStore(lambda: pool).unit(books="shared") as unit:
                first = min(event.event_time for event in current)
                page = await unit.current_priced_page(first, max(event.event_time for event in current) + timedelta(seconds=1),
                                                      None, (first - timedelta(microseconds=1), uuid.UUID(int=0)), 1_000)
            assert sorted(item.priced.id for item in page) == sorted(event.id for event in current)
            assert {item.consumption.id: canonical_json(pricing.price_in_force(item.consumption, books)) for item in page} \
                == prices_before
        finally:
            await pool.close()
        consumed_inputs, book_inputs = await load_pricing_inputs(connection)
        audited = reprice([PRICED_DECODER.decode(payload) for *_, payload in priced_after], consumed_inputs, book_inputs)
        assert (audited.mismatches, audited.unrecomputable, len(audited.amounts)) == ([], [], len(priced_after))

        # --- figures ------------------------------------------------------------------------------
        assert await projection(connection, None) == ledger_before
        assert rebuild(orjson.loads(payload) for *_, payload in priced_after) == rebuilt_before

        # --- what each service produced, in production order, for a republish ---------------------
        metering_records = [record async for record in metering_produced.produced_records(connection)]
        assert [value for topic, _, value, _ in metering_records if topic == TOKENS_CONSUMED.name] == [
            bytes(row["payload"]) for row in rows]
        assert sorted(value for topic, _, value, _ in metering_records if topic == USAGE_REPORTED.name) == sorted(
            value for _, value in keys.values() if value is not None)
        rejected = [orjson.loads(value) for topic, _, value, _ in metering_records if topic == USAGE_REJECTED.name]
        assert sorted(event["reason_code"] for event in rejected) == ["missing_field", "not_json", "unknown_bu"]
        pricing_records = [record async for record in pricing_produced.produced_records(connection)]
        assert [(topic, key, value) for topic, key, value, _ in pricing_records] == [
            (TOKENS_PRICED.name, decode(Priced, payload).payer_bu.encode(), payload) for *_, payload in priced_after]
        assert all(tuple(headers) == () for *_, headers in metering_records + pricing_records)
    finally:
        await connection.close()
