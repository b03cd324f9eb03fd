"""Pricing's tables: asyncpg here and only here."""

from __future__ import annotations

import uuid
from typing import Any, Final

import asyncpg

from tokenhub.contracts.events import PriceBookPublished, decode
from tokenhub.services.common.db import insert_new

# Pricing consumption takes this lock shared and storing a book takes it
# exclusively, so consumption parked for want of a book is always visible to
# the transaction that stores the book and unparks it.
_BOOKS_LOCK_KEY: Final = 0x70_72_69_63_65  # fixed, arbitrary
LOCK_BOOKS_SHARED: Final = f"select pg_advisory_xact_lock_shared({_BOOKS_LOCK_KEY})"
LOCK_BOOKS_EXCLUSIVE: Final = f"select pg_advisory_xact_lock({_BOOKS_LOCK_KEY})"

INSERT_BOOK: Final = """
insert into pricing.price_books (book_id, version, effective_from, payload, retroactive, actor, reason, published_at)
values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (book_id, version) do nothing
returning version
"""
SELECT_BOOKS: Final = "select payload from pricing.price_books"
SELECT_BOOK_KEYS: Final = "select book_id, version from pricing.price_books"

INSERT_ARCHIVE: Final = """
insert into pricing.consumed_archive (consumed_id, payer_bu, model, event_time, payload)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bytea[])
on conflict (consumed_id) do nothing
returning consumed_id
"""
ARCHIVE_COLUMNS: Final = ("consumed_id", "payer_bu", "model", "event_time", "payload")
PRICED_COLUMNS: Final = ("priced_id", "consumed_id", "kind", "book_id", "book_version", "total_amount", "payload")


async def archive_consumed(connection: asyncpg.Connection, records: list[tuple[Any, ...]]) -> set[uuid.UUID]:
    """Archive TokenConsumed rows (ARCHIVE_COLUMNS); the ids not archived before."""
    return await insert_new(connection, schema="pricing", table="consumed_archive", columns=ARCHIVE_COLUMNS,
                            records=records, key_columns=1, fallback_sql=INSERT_ARCHIVE)


async def insert_priced(connection: asyncpg.Connection, records: list[tuple[Any, ...]]) -> set[uuid.UUID]:
    """Store Priced rows (PRICED_COLUMNS); the ids not stored before."""
    return await insert_new(connection, schema="pricing", table="priced", columns=PRICED_COLUMNS,
                            records=records, key_columns=1, fallback_sql=INSERT_PRICED)


INSERT_PARKED: Final = """
insert into pricing.parked (consumed_id, model, event_time, reason)
select * from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])
on conflict (consumed_id) do update set reason = excluded.reason
"""
INSERT_PRICED: Final = """
insert into pricing.priced (priced_id, consumed_id, kind, book_id, book_version, total_amount, payload)
select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::numeric[], $7::bytea[])
on conflict (priced_id) do nothing
returning priced_id
"""
# Parked consumption of the models a new book prices, a page at a time in
# (event_time, consumed_id) order: $1 models, $2/$3 the last row seen, $4 the page size.
SELECT_PARKED_FOR_MODELS: Final = """
select parked.consumed_id, parked.event_time, archive.payload from pricing.parked parked
join pricing.consumed_archive archive using (consumed_id)
where parked.model = any($1::text[]) and (parked.event_time, parked.consumed_id) > ($2, $3)
order by parked.event_time, parked.consumed_id
limit $4
for update of parked
"""
DELETE_PARKED: Final = "delete from pricing.parked where consumed_id = any($1::uuid[])"


class BookCache:
    """Price book versions, reloaded only when a new version was stored."""

    def __init__(self) -> None:
        self._keys: frozenset[tuple[str, int]] = frozenset()
        self._books: list[PriceBookPublished] = []

    async def load(self, connection: asyncpg.Connection) -> list[PriceBookPublished]:
        keys = frozenset((row["book_id"], row["version"]) for row in await connection.fetch(SELECT_BOOK_KEYS))
        if keys != self._keys:
            self._books = [decode(PriceBookPublished, row["payload"]) for row in await connection.fetch(SELECT_BOOKS)]
            self._keys = keys
        return self._books
# The current Priced (a charge or the latest correction) of each consumption in
# [$1, $2), optionally of one model ($3), a page at a time after ($4, $5), $6 rows.
SELECT_CURRENT_PRICED: Final = """
select archive.event_time, priced.priced_id, priced.payload as priced, archive.payload as consumed
from pricing.priced priced join pricing.consumed_archive archive using (consumed_id)
where priced.superseded_by is null and priced.kind <> 'reversal'
  and archive.event_time >= $1 and archive.event_time < $2 and ($3::text is null or archive.model = $3)
  and (archive.event_time, priced.priced_id) > ($4, $5)
order by archive.event_time, priced.priced_id
limit $6
for update of priced
"""
MARK_SUPERSEDED: Final = """
update pricing.priced set superseded_by = data.successor
from unnest($1::uuid[], $2::uuid[]) as data(priced_id, successor)
where priced.priced_id = data.priced_id
"""
SELECT_PARKED: Final = """
select parked.consumed_id, parked.model, parked.event_time, parked.reason, parked.parked_at, archive.payer_bu
from pricing.parked parked join pricing.consumed_archive archive using (consumed_id)
order by parked.event_time, parked.consumed_id
limit $1
"""
COUNT_PARKED: Final = "select count(*) from pricing.parked"
SELECT_BOOK_VERSION: Final = "select payload from pricing.price_books where book_id = $1 and version = $2"
SELECT_LATEST_VERSION: Final = "select max(version) from pricing.price_books where book_id = $1"
