"""Replay's archive counted in worker processes, on the real database: the same
balances as the single-process rebuild to the last digit, written the same way
and with the BUs in the same order, with part boundaries inside the journal's
rows; an unreadable row fails it with the same NotReadable."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from tokenhub.audit import balances, replay
from tokenhub.contracts.stored import pack
from tokenhub.infra.migrate import migrate
from tokenhub.services.common.db import create_pool

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENTRIES = 3_000
"""Enough for about a hundred journal pages: three parts, each with rows."""
WORKERS = 3
BUS = ("taobao-tmall", "cainiao", "qwen-platform", "amap", "ele-me", "fliggy")
ODD_AMOUNTS = ("1.5", "2", "0.25", "7.000")
"""Amounts not at the fixed 12 places: counted as Decimals, apart from the integers."""
COLUMNS = ("priced_id", "sequence", "event_time", "posted_at", "tokens", "chain", "money_debit", "money_credit", "amount",
           "tokens_debit", "tokens_credit", "entry_hash", "priced")


def _entries(count: int) -> tuple[list[tuple], dict[str, dict[str, Decimal]]]:
    """Journal rows of generated Priced, and the balances they add up to, added here as Decimals."""
    rows = []
    expected: dict[str, dict[str, Decimal]] = defaultdict(balances.zero)
    sequences: dict[str, int] = defaultdict(int)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for index in range(count):
        payer, consumer, provider = BUS[index % 4], BUS[(index * 7) % 5], BUS[4 + index % 2]
        amount = ODD_AMOUNTS[index // 97 % 4] if index % 97 == 0 else f"{Decimal(index * 1_234_567_891) / 10**12 * 3:.12f}"
        tokens = 1_000 + index * 37
        sequences[payer] += 1
        moment = start + timedelta(seconds=index)
        priced = orjson.dumps({"id": str(uuid.uuid4()), "event_time": moment.isoformat().replace("+00:00", "Z"),
                               "payer_bu": payer, "consumer_bu": consumer, "provider_bu": provider,
                               "total_amount": amount, "total_tokens": tokens, "lines": []}, option=orjson.OPT_SORT_KEYS)
        rows.append((uuid.uuid4(), sequences[payer], moment, moment, tokens, payer, f"bu:{payer}:spend",
                     f"bu:{provider}:revenue", Decimal(amount), f"bu:{consumer}:consumed", f"bu:{provider}:served",
                     index.to_bytes(32, "big"), pack("tokens.priced", priced)))
        expected[payer]["spend"] += Decimal(amount)
        expected[provider]["revenue"] += Decimal(amount)
        expected[consumer]["tokens_consumed"] += tokens
        expected[provider]["tokens_served"] += tokens
    return rows, dict(expected)


def _written(found: balances.Balances) -> list[tuple[str, list[tuple[str, str]]]]:
    """Balances as they are written: BUs in their order, each figure's Decimal as its str (so 7 and 7.000 differ)."""
    return [(bu, [(figure, str(value)) for figure, value in values.items()]) for bu, values in found.items()]


async def test_the_archive_counted_in_workers_equals_the_single_process_rebuild_and_names_an_unreadable_row(backend) -> None:  # noqa: ANN001
    name = f"replay_{uuid.uuid4().hex[:8]}"
    database_url = (backend.settings.database_url or "").replace("/tokenhub?", f"/{name}?")
    assert database_url != backend.settings.database_url
    admin = await asyncpg.connect(backend.settings.database_url)
    await admin.execute(f"create database {name}")
    try:
        await migrate(database_url)
        rows, expected = _entries(ENTRIES)
        pool = await create_pool(database_url, size_max=2)
        try:
            async with pool.acquire() as connection:
                await connection.copy_records_to_table("journal", schema_name="ledger", columns=COLUMNS, records=rows)
                pages = await connection.fetchval(replay.SELECT_JOURNAL_PAGES)
                # Each worker's part holds rows: the boundaries fall inside the data, not after it.
                bounds = [(pages * part // WORKERS, 0) for part in range(WORKERS)] + [None]
                per_part = [await connection.fetchval(
                    "select count(*) from ledger.journal where ctid >= $1::tid and ($2::tid is null or ctid < $2::tid)",
                    bounds[index], bounds[index + 1]) for index in range(WORKERS)]
                single = balances.rebuild(await replay.priced_from_archive(connection))  # one query, one connection
            assert sum(per_part) == ENTRIES and min(per_part) > 0, per_part
            in_parts = balances.rebuild(await replay.priced_from_archive(pool))  # today's two parts in this process
            events, in_workers = await replay.balances_from_archive(pool, database_url, workers=WORKERS, pages_min=0)
            assert events == ENTRIES
            assert _written(in_workers) == _written(single) == _written(in_parts)
            assert in_workers == expected
            assert in_workers["taobao-tmall"]["spend"] == sum(
                (Decimal(row[8]) for row in rows if row[5] == "taobao-tmall"), Decimal(0)) > 0
            small_events, counted_here = await replay.balances_from_archive(pool, database_url, workers=WORKERS,
                                                                            pages_min=pages + 1)
            assert (small_events, _written(counted_here)) == (ENTRIES, _written(single))

            broken = (uuid.uuid4(), 10_000, rows[0][2], rows[0][3], 1, "cainiao", "bu:cainiao:spend", "bu:amap:revenue",
                      Decimal(1), "bu:cainiao:consumed", "bu:amap:served", bytes(32), b"\x00 not a stored payload")
            async with pool.acquire() as connection:
                await connection.copy_records_to_table("journal", schema_name="ledger", columns=COLUMNS, records=[broken])
            with pytest.raises(replay.NotReadable) as in_process:
                await replay.priced_from_archive(pool)
            with pytest.raises(replay.NotReadable) as from_workers:
                await replay.balances_from_archive(pool, database_url, workers=WORKERS, pages_min=0)
            assert str(from_workers.value) == str(in_process.value)
            assert str(from_workers.value).startswith("an archived Priced cannot be read: a stored payload is neither")
            assert "\n" not in str(from_workers.value)
        finally:
            await pool.close()
    finally:
        await admin.execute(f"drop database if exists {name} with (force)")
        await admin.close()
