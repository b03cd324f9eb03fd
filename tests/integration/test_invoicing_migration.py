"""Migration 0024 on an invoicing schema the release before it filled
(tests/fixtures/invoicing_release, made by its generate.py with that release's
code): every issued invoice keeps its bytes and status; the drafts, spend and
settlement read the same; a posting that arrived after the dump fills its
chain's gap; and closing March issues exactly what the release issued."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from types import SimpleNamespace
from urllib.parse import urlparse, urlunparse

import asyncpg
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.periods import parse
from tokenhub.infra.migrate import MIGRATIONS_DIR, migrate
from tokenhub.infra.settings import Settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.invoicing import handlers, queries

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "invoicing_release"
FIRST_NEW: Final = "0024"
ZONE = "Asia/Shanghai"
NOW_AT_CLOSE = datetime(2026, 4, 3, 1, tzinfo=UTC)


def _with_database(url: str, name: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{name}"))


async def _release_database(server_url: str) -> tuple[str, str]:
    """A database of its own on the session's server, migrated as the release was
    (every migration before 0024) and filled by it."""
    name = f"invoicing_release_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"create database {name}")
    finally:
        await admin.close()
    url = _with_database(server_url, name)
    release = Path(tempfile.mkdtemp(prefix="migrations-"))
    try:
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.name < FIRST_NEW:
                shutil.copy(path, release / path.name)
        await migrate(url, release)
    finally:
        shutil.rmtree(release, ignore_errors=True)
    connection = await asyncpg.connect(url)
    try:
        await connection.execute((FIXTURE / "invoicing.sql").read_text())
    finally:
        await connection.close()
    return name, url


async def _drop(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"drop database if exists {name} with (force)")
    finally:
        await admin.close()


def _records(values: list[str]) -> list[ConsumerRecord]:
    return [ConsumerRecord(topic="ledger.posted", partition=0, offset=index, timestamp=0, timestamp_type=0, key=None,
                           value=value.encode(), checksum=None, serialized_key_size=0, serialized_value_size=0, headers=())
            for index, value in enumerate(values)]


async def test_migration_keeps_every_invoice_and_closes_as_the_release_did(backend) -> None:
    expected = orjson.loads((FIXTURE / "expected.json").read_bytes())
    server_url = backend.settings.database_url or ""
    name, url = await _release_database(server_url)
    try:
        connection = await asyncpg.connect(url)
        try:
            stored = await connection.fetch("select payload::text from invoicing.invoices order by payer_bu, number")
            postings = await connection.fetchval("select count(*) from invoicing.postings")
        finally:
            await connection.close()
        assert [canonical_json(orjson.loads(row["payload"])).decode() for row in stored] == [
            row["payload"] for row in expected["issued_before"]]
        assert postings == 23  # one of them will wait: delta's fourth, ahead of its third

        applied = await migrate(url)
        assert applied[0].startswith(FIRST_NEW)

        settings = Settings(database_url=url, timezone=ZONE, currency="CNY", currency_minor_units=2)
        pool = await create_pool(url, size_max=2)
        try:
            async with pool.acquire() as connection:
                rows = await connection.fetch("select invoice_id::text, payer_bu, number, status, payload "
                                              "from invoicing.invoices order by payer_bu, number")
                left = await connection.fetchval("select count(*) from pg_tables where schemaname = 'invoicing' "
                                                 "and tablename = 'postings'")
            # The bytes are the canonical form the release published, status and all.
            assert [{**dict(row), "payload": bytes(row["payload"]).decode()} for row in rows] == expected["issued_before"]
            assert left == 0

            # Drafts read the same, but for the one posting that now waits for its chain's gap
            # (the release put delta's fourth on the draft; it waits for the third).
            listed = await queries.invoices(pool, settings, bu=None, period=None)
            assert [canonical_json(invoice).decode() for invoice in listed if invoice.payer_bu != "delta"] == [
                invoice for invoice in expected["listed_before"] if orjson.loads(invoice)["payer_bu"] != "delta"]
            delta = [invoice for invoice in listed if invoice.payer_bu == "delta"]
            assert [(invoice.status, invoice.postings_count, [head.sequence for head in invoice.chain_heads])
                    for invoice in delta] == [("issued", 1, [1]), ("draft", 1, [2])]
            for payer, month in (("acme", "2026-02"), ("gamma", "2026-02"), ("beta", "2026-03")):
                report = await queries.spend(pool, settings, payer, parse(month, ZONE))
                assert [[row["consumer_bu"], row["app"], row["model"], row["token_class"], row["tokens"],
                         f"{row['amount']:f}"] for row in report.rows] == expected["spend"][payer]

            waiting = await queries.waiting_chains(pool)
            assert [(chain.chain, chain.missing_sequence, chain.waiting_from, chain.waiting) for chain in waiting] == [
                ("delta", 3, 4, 1)]

            runtime = SimpleNamespace(settings=settings, db=lambda: pool, now=lambda: NOW_AT_CLOSE,
                                      relay=_no_relay)
            await handlers.handle_posted_records(runtime, _records(expected["arrives_after_dump"]))
            assert await queries.waiting_chains(pool) == []
            listed = await queries.invoices(pool, settings, bu=None, period=None)
            assert [canonical_json(invoice).decode() for invoice in listed] == expected["listed_after_it"]
            closed = await handlers.close_period(pool, settings, "2026-03", actor="finance-ops", now=NOW_AT_CLOSE)
            assert [canonical_json(invoice).decode() for invoice in closed] == expected["closed_march"]
            async with pool.acquire() as connection:
                statuses = [[row["payer_bu"], row["number"], row["status"]] for row in await connection.fetch(
                    "select payer_bu, number, status from invoicing.invoices order by payer_bu, number")]
                settlements = {row["period"]: bytes(row["payload"]).decode() for row in await connection.fetch(
                    "select period, payload from invoicing.settlements")}
            assert statuses == expected["statuses_after"]
            # February's as the release stored it; March's as the release netted it, naming now
            # its revision and the invoices it covers (fields the settlement gained since).
            assert settlements["2026-02"] == expected["settlements_after"]["2026-02"]
            march = orjson.loads(settlements["2026-03"])
            assert (march.pop("revision"), len(march.pop("invoices"))) == (1, 6)
            assert march == orjson.loads(expected["settlements_after"]["2026-03"])
        finally:
            await pool.close()
    finally:
        await _drop(server_url, name)


async def _no_relay() -> int:
    return 0
