"""Pricing's tables: asyncpg here and only here. Handlers open a unit of work
(`PricingStore.unit`, one transaction under the books lock) and call its typed
methods, which take and return domain types."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import asyncpg

from tokenhub.contracts import codecs
from tokenhub.contracts.stored import pack, unpack
from tokenhub.contracts.codecs import ConsumedWire
from tokenhub.contracts.events import Priced, PriceBookPublished, decode
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.topics import TOKENS_PRICED
from tokenhub.services.common.db import insert_new
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.pricing.reprice import PricedConsumption, consumption_of

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
SELECT_SETTLEMENT_CURRENCY: Final = "select currency from public.tokenhub_deployment"
INSERT_REFUSED_BOOK: Final = """
insert into pricing.refused_books (book_id, version, payload, reason) values ($1, $2, $3, $4)
"""
SELECT_BOOK_KEYS: Final = "select book_id, version from pricing.price_books"

# pricing.priced holds each Priced produced, keyed by its id (a charge's id is its
# TokenConsumed's: contracts.ids.priced_id), which is the dedup (migration 0018),
# its payload packed (contracts.stored). Parked consumption keeps its input as
# received, unpacked: few rows, each deleted once a book prices it.
PRICED_COLUMNS: Final = ("priced_id", "kind", "event_time", "model", "request_input_tokens", "payload")
INSERT_PRICED: Final = """
insert into pricing.priced (priced_id, kind, event_time, model, request_input_tokens, payload)
select * from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[], $6::bytea[])
on conflict (priced_id) do nothing
returning priced_id
"""
INSERT_PARKED: Final = """
insert into pricing.parked (consumed_id, model, event_time, reason, payload)
select * from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::bytea[])
on conflict (consumed_id) do nothing
returning consumed_id
"""
# Parked consumption of the models a new book prices, a page at a time in
# (event_time, consumed_id) order: $1 models, $2/$3 the last row seen, $4 the page size.
SELECT_PARKED_FOR_MODELS: Final = """
select consumed_id, event_time, payload from pricing.parked
where model = any($1::text[]) and (event_time, consumed_id) > ($2, $3)
order by event_time, consumed_id
limit $4
for update
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
# [$1, $2), optionally of one model ($3), a page at a time after ($4, $5), $6 rows
# (the block range index priced_event_time finds the window).
SELECT_CURRENT_PRICED: Final = """
select event_time, priced_id, request_input_tokens, payload from pricing.priced
where superseded_by is null and kind <> 'reversal'
  and event_time >= $1 and event_time < $2 and ($3::text is null or model = $3)
  and (event_time, priced_id) > ($4, $5)
order by event_time, priced_id
limit $6
for update
"""
MARK_SUPERSEDED: Final = """
update pricing.priced set superseded_by = data.successor
from unnest($1::uuid[], $2::uuid[]) as data(priced_id, successor)
where priced.priced_id = data.priced_id
"""
SELECT_PARKED: Final = """
select consumed_id, model, event_time, reason, parked_at, convert_from(payload, 'UTF8')::jsonb ->> 'payer_bu' as payer_bu
from pricing.parked
order by event_time, consumed_id
limit $1
"""
COUNT_PARKED: Final = "select count(*) from pricing.parked"
SELECT_BOOK_VERSION: Final = "select payload from pricing.price_books where book_id = $1 and version = $2"
SELECT_LATEST_VERSION: Final = "select max(version) from pricing.price_books where book_id = $1"


@dataclass(frozen=True)
class ParkedConsumption:
    consumed: ConsumedWire
    event_time: datetime


@dataclass(frozen=True)
class CurrentPriced:
    """The Priced that stands for a consumption now, and the consumption as that
    Priced records it (what repricing needs of it)."""

    consumption: PricedConsumption
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

    async def park(self, parked: Sequence[tuple[ConsumedWire, bytes, str]]) -> list[ConsumedWire]:
        """Park consumption with its input (the TokenConsumed as received) and the
        reason it has no price; the ones not parked before, in the order given."""
        if not parked:
            return []
        rows = await self._connection.fetch(
            INSERT_PARKED,
            [event.id for event, _, _ in parked],
            [event.model for event, _, _ in parked],
            [event.event_time for event, _, _ in parked],
            [reason for _, _, reason in parked],
            [value for _, value, _ in parked],
        )
        new_ids = {row["consumed_id"] for row in rows}
        return [event for event, _, _ in parked if event.id in new_ids]

    async def parked_page(self, models: list[str], after: tuple[datetime, uuid.UUID], limit: int) -> list[ParkedConsumption]:
        """Parked consumption of `models`, in (event time, id) order after `after`, locked until the commit."""
        rows = await self._connection.fetch(SELECT_PARKED_FOR_MODELS, models, *after, limit)
        return [ParkedConsumption(codecs.decode_consumed(row["payload"]), row["event_time"]) for row in rows]

    async def unpark(self, consumed_ids: Sequence[uuid.UUID]) -> None:
        if consumed_ids:
            await self._connection.execute(DELETE_PARKED, list(consumed_ids))

    async def parked_count(self) -> int:
        return await self._connection.fetchval(COUNT_PARKED)

    async def save_priced(self, priced: Sequence[tuple[Priced, int]]) -> list[Priced]:
        """Store what was priced, each with its request's whole input, and stage it
        for tokens.priced: pricing's record. A Priced stored before (its id is its
        consumption's) is neither stored nor staged again; the ones stored now."""
        if not priced:
            return []
        payloads = {event.id: codecs.encode_priced(event) for event, _ in priced}
        new_ids = await insert_new(self._connection, schema=SCHEMA, table="priced", columns=PRICED_COLUMNS, records=[
            (event.id, event.kind, event.event_time, event.model, request_input_tokens, pack(TOKENS_PRICED.name, payloads[event.id]))
            for event, request_input_tokens in priced], key_columns=1, fallback_sql=INSERT_PRICED)
        stored = [event for event, _ in priced if event.id in new_ids]
        await stage(self._connection, SCHEMA, [
            OutboxRow(TOKENS_PRICED.name, event.payer_bu.encode(), payloads[event.id]) for event in stored])
        return stored

    async def current_priced_page(self, start: datetime, end: datetime, model: str | None,
                                  after: tuple[datetime, uuid.UUID], limit: int) -> list[CurrentPriced]:
        """The current Priced of each consumption in [start, end), after `after`, locked until the commit."""
        rows = await self._connection.fetch(SELECT_CURRENT_PRICED, start, end, model, *after, limit)
        current = []
        for row in rows:
            priced = decode(Priced, unpack(row["payload"]))
            current.append(CurrentPriced(consumption_of(priced, row["request_input_tokens"]), priced, row["event_time"]))
        return current

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

    async def settlement_currency(self) -> str | None:
        """The deployment's currency as recorded at first initialisation (infra.deployment)."""
        return await self._connection.fetchval(SELECT_SETTLEMENT_CURRENCY)

    async def refuse_books(self, refused: Sequence[tuple[PriceBookPublished, bytes, str]]) -> None:
        """Keep refused versions with their reason; they never price anything."""
        if refused:
            await self._connection.executemany(INSERT_REFUSED_BOOK, [
                (book.book_id, book.version, value, reason) for book, value, reason in refused])

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
