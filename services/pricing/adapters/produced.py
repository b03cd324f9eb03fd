"""What pricing produced, read back from its own tables for the republish into
a broker that lost its topics (`infra.boot`, docs/architecture.md, durability):
every Priced pricing produced (charges, reversals and corrections; a superseded
one is marked, never deleted) from its record `pricing.priced`, in production
order (stored packed, published as the canonical bytes `unpack` gives back),
and the price book versions it keeps, as the full PriceBookPublished events
they arrived as."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import msgspec

from tokenhub.contracts.stored import unpack
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED, TOKENS_PRICED
from tokenhub.services.common.outbox import ProducedRecord

ROWS_PREFETCH: Final = 5_000
"""Rows a cursor holds at a time: bounds memory whatever the table's size."""
PRODUCED_RANGE_ROWS: Final = 10_000
"""Sequence numbers read per query of the record: bounds the rows in memory."""

SELECT_BOOKS: Final = """
select book_id, payload from pricing.price_books order by published_at, book_id, version
"""
SELECT_LAST_SEQ: Final = "select pg_sequence_last_value(pg_get_serial_sequence('pricing.priced', 'seq')::regclass)"
# By seq range (the block range index priced_seq), in production order.
SELECT_PRODUCED: Final = "select payload from pricing.priced where seq > $1 and seq <= $2 order by seq"


class _Payer(msgspec.Struct):
    payer_bu: str


_PAYER: Final = msgspec.json.Decoder(_Payer)


async def configuration_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every price book version, as published (its stored bytes are the event), in publication order."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_BOOKS, prefetch=ROWS_PREFETCH):
            yield PRICEBOOK_PUBLISHED.name, row["book_id"].encode(), bytes(row["payload"]), ()


async def produced_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every Priced, keyed by its payer, in the order it was produced."""
    last = await connection.fetchval(SELECT_LAST_SEQ) or 0
    for start in range(0, last, PRODUCED_RANGE_ROWS):
        for row in await connection.fetch(SELECT_PRODUCED, start, start + PRODUCED_RANGE_ROWS):
            payload = unpack(row["payload"])
            yield TOKENS_PRICED.name, _PAYER.decode(payload).payer_bu.encode(), payload, ()
