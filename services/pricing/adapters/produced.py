"""What pricing produced, read back from its own tables for the republish into
a broker that lost its topics (`infra.boot`, docs/architecture.md, durability).

First version, against today's tables: every Priced pricing produced (charges,
reversals and corrections; a superseded one is marked, never deleted) from
`pricing.priced`, and the price book versions it keeps, as the full
PriceBookPublished events they arrived as."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import orjson

from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED, TOKENS_PRICED
from tokenhub.services.common.outbox import ProducedRecord

ROWS_PREFETCH: Final = 5_000
"""Rows a cursor holds at a time: bounds memory whatever the table's size."""

SELECT_BOOKS: Final = """
select book_id, payload from pricing.price_books order by published_at, book_id, version
"""
SELECT_PRICED: Final = "select payload from pricing.priced order by priced_at, priced_id"


async def configuration_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every price book version, as published (its stored bytes are the event), in publication order."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_BOOKS, prefetch=ROWS_PREFETCH):
            yield PRICEBOOK_PUBLISHED.name, row["book_id"].encode(), bytes(row["payload"]), ()


async def produced_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every Priced, keyed by its payer, in the order it was priced."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_PRICED, prefetch=ROWS_PREFETCH):
            value = bytes(row["payload"])
            yield TOKENS_PRICED.name, orjson.loads(value)["payer_bu"].encode(), value, ()
