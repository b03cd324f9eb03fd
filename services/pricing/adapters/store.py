"""Pricing's tables: asyncpg here and only here. Handlers open a unit of work
(`PricingStore.unit`, one transaction under the books lock) and call its typed
methods, which take and return domain types."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import Priced, PriceBookPublished, TokenConsumed, decode
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.topics import TOKENS_PRICED
from tokenhub.services.common.db import insert_new
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage

SCHEMA: Final = "pricing"

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


@dataclass(frozen=True)
class ParkedConsumption:
    consumed: TokenConsumed
    event_time: datetime


@dataclass(frozen=True)
class CurrentPriced:
    """A consumption and the Priced that stands for it now."""

    consumed: TokenConsumed
    priced: Priced
    event_time: datetime


BooksLock = Literal["shared", "exclusive"]


class PricingUnit:
    """One transaction of pricing's writes and the reads they depend on."""

    def __init__(self, connection: asyncpg.Connection, cache: BookCache) -> None:
        self._connection = connection
        self._cache = cache

    async def books(self) -> BookIndex:
        return BookIndex.of(await self._cache.load(self._connection))

    async def archive_consumed(self, consumed: Sequence[tuple[TokenConsumed, bytes]]) -> list[TokenConsumed]:
        """Archive consumption as received; the events not archived before, in the order given."""
        new_ids = await archive_consumed(self._connection, [
            (event.id, event.payer_bu, event.model, event.event_time, value) for event, value in consumed])
        return [event for event, _ in consumed if event.id in new_ids]

    async def park(self, parked: Sequence[tuple[TokenConsumed, str]]) -> None:
        if not parked:
            return
        await self._connection.execute(
            INSERT_PARKED,
            [event.id for event, _ in parked],
            [event.model for event, _ in parked],
            [event.event_time for event, _ in parked],
            [reason for _, reason in parked],
        )

    async def parked_page(self, models: list[str], after: tuple[datetime, uuid.UUID], limit: int) -> list[ParkedConsumption]:
        """Parked consumption of `models`, in (event time, id) order after `after`, locked until the commit."""
        rows = await self._connection.fetch(SELECT_PARKED_FOR_MODELS, models, *after, limit)
        return [ParkedConsumption(decode(TokenConsumed, row["payload"]), row["event_time"]) for row in rows]

    async def unpark(self, consumed_ids: Sequence[uuid.UUID]) -> None:
        if consumed_ids:
            await self._connection.execute(DELETE_PARKED, list(consumed_ids))

    async def parked_count(self) -> int:
        return await self._connection.fetchval(COUNT_PARKED)

    async def save_priced(self, priced: Sequence[Priced]) -> None:
        """Store what was priced and stage it for tokens.priced."""
        if not priced:
            return
        payloads = [canonical_json(event) for event in priced]
        await insert_priced(self._connection, [
            (event.id, event.consumed_id, event.kind, event.book_id, event.book_version, event.total_amount, payload)
            for event, payload in zip(priced, payloads, strict=True)])
        await stage(self._connection, SCHEMA, [
            OutboxRow(TOKENS_PRICED.name, event.payer_bu.encode(), payload)
            for event, payload in zip(priced, payloads, strict=True)])

    async def current_priced_page(self, start: datetime, end: datetime, model: str | None,
                                  after: tuple[datetime, uuid.UUID], limit: int) -> list[CurrentPriced]:
        """The current Priced of each consumption in [start, end), after `after`, locked until the commit."""
        rows = await self._connection.fetch(SELECT_CURRENT_PRICED, start, end, model, *after, limit)
        return [CurrentPriced(decode(TokenConsumed, row["consumed"]), decode(Priced, row["priced"]), row["event_time"])
                for row in rows]

    async def mark_superseded(self, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """(replaced Priced id, the correction that replaces it)."""
        if pairs:
            await self._connection.execute(MARK_SUPERSEDED, [old for old, _ in pairs], [new for _, new in pairs])

    async def store_books(self, books: Sequence[tuple[PriceBookPublished, bytes]]) -> tuple[list[PriceBookPublished], list[PriceBookPublished]]:
        """Store new versions; (stored now, refused: a stored version number with other bytes).
        A version never changes once stored; an identical copy is neither."""
        stored: list[PriceBookPublished] = []
        conflicts: list[PriceBookPublished] = []
        for book, value in books:
            if await self._connection.fetchval(INSERT_BOOK, book.book_id, book.version, book.effective_from, value,
                                               book.retroactive, book.actor, book.reason, book.published_at) is not None:
                stored.append(book)
            elif (await self._connection.fetchval(SELECT_BOOK_VERSION, book.book_id, book.version)) != value:
                conflicts.append(book)
        return stored, conflicts

    async def count(self, counts: dict[str, int]) -> None:
        await bump_counters(self._connection, SCHEMA, counts)


class PricingStore:
    """Pricing's schema behind a pool, with the books read once per new version."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool
        self._cache = BookCache()

    @asynccontextmanager
    async def unit(self, books: BooksLock) -> AsyncIterator[PricingUnit]:
        """A transaction holding the books lock: shared to price, exclusive to store books."""
        async with self._pool().acquire() as connection, connection.transaction():
            await connection.execute(LOCK_BOOKS_SHARED if books == "shared" else LOCK_BOOKS_EXCLUSIVE)
            yield PricingUnit(connection, self._cache)
