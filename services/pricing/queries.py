"""Pricing's read side, for the CLI, the HTTP API and pages: price books and
the prices in force at a time, and consumption parked for want of a price.
Reads pricing's own schema only (Tokens by class and by funding share are
metering's: its record holds every TokenConsumed)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from tokenhub.contracts.events import ModelPrice, PriceBookPublished, decode
from tokenhub.contracts.pricebook import BookIndex

PARKED_SHOWN_MAX: Final = 1_000
"""Parked consumption listed at once: a screenful to act on; the total is given beside it."""

SELECT_BOOKS: Final = "select payload from pricing.price_books"
SELECT_BOOK_STORED: Final = "select true from pricing.price_books where book_id = $1 and version = $2"
SELECT_LATEST_VERSION: Final = "select max(version) from pricing.price_books where book_id = $1"
SELECT_PARKED: Final = """
select consumed_id, model, event_time, reason, parked_at, convert_from(payload, 'UTF8')::jsonb ->> 'payer_bu' as payer_bu
from pricing.parked
order by event_time, consumed_id
limit $1
"""
COUNT_PARKED: Final = "select count(*) from pricing.parked"



async def price_books(pool: asyncpg.Pool) -> list[PriceBookPublished]:
    """Every stored price book version."""
    async with pool.acquire() as connection:
        return [decode(PriceBookPublished, row["payload"]) for row in await connection.fetch(SELECT_BOOKS)]


async def prices_in_force(pool: asyncpg.Pool, at: datetime, model: str | None = None) -> list[tuple[PriceBookPublished, ModelPrice]]:
    """(book version, its price) for `model`, or for every model any book
    prices, as in force at `at`; by model name. Models no book prices at `at` are left out."""
    index = BookIndex.of(await price_books(pool))
    chosen = [model] if model else sorted({entry.model for book in index.versions for entry in book.models})
    found = []
    for name in chosen:
        book = index.in_force(name, at)
        price = book.price_for(name) if book is not None else None
        if book is not None and price is not None:
            found.append((book, price))
    return found


async def book_stored(pool: asyncpg.Pool, book_id: str, version: int) -> bool:
    """Whether pricing has stored this version of the book."""
    async with pool.acquire() as connection:
        return bool(await connection.fetchval(SELECT_BOOK_STORED, book_id, version))


async def latest_version(pool: asyncpg.Pool, book_id: str) -> int | None:
    """The highest stored version of the book; None for a book never published."""
    async with pool.acquire() as connection:
        return await connection.fetchval(SELECT_LATEST_VERSION, book_id)


@dataclass(frozen=True)
class ParkedConsumption:
    """A TokenConsumed that waits for a price book that prices it."""

    consumed_id: uuid.UUID
    payer_bu: str
    model: str
    event_time: datetime
    parked_at: datetime
    reason: str


async def parked(pool: asyncpg.Pool, limit: int = PARKED_SHOWN_MAX) -> tuple[list[ParkedConsumption], int]:
    """(the oldest `limit` parked consumptions by event time, how many are parked in all)."""
    async with pool.acquire() as connection:
        rows = await connection.fetch(SELECT_PARKED, limit)
        total = await connection.fetchval(COUNT_PARKED)
    return [ParkedConsumption(row["consumed_id"], row["payer_bu"], row["model"], row["event_time"], row["parked_at"],
                              row["reason"]) for row in rows], total
