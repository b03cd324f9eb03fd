"""Pricing's read side, for the CLI, the HTTP API and pages: price books and
the prices in force at a time, consumption parked for want of a price, and
Tokens consumed by class and by funding share. Reads pricing's own schema only."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
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
select parked.consumed_id, parked.model, parked.event_time, parked.reason, parked.parked_at, archive.payer_bu
from pricing.parked parked join pricing.consumed_archive archive using (consumed_id)
order by parked.event_time, parked.consumed_id
limit $1
"""
COUNT_PARKED: Final = "select count(*) from pricing.parked"
SELECT_TOKENS_BY_CLASS: Final = """
select token.key as token_class, string_agg(distinct archive.model, ', ' order by archive.model) as models,
       sum(token.value::bigint) as tokens
from pricing.consumed_archive archive, jsonb_each_text(convert_from(archive.payload, 'UTF8')::jsonb -> 'tokens') token
group by token.key order by tokens desc
"""
SELECT_FUNDING_SHARES: Final = """
select payload ->> 'funding_agreement_id' as agreement, payload ->> 'consumer_bu' as consumer_bu,
       payload ->> 'payer_bu' as payer_bu, payload ->> 'share_percent' as share, count(*) as events,
       sum((select sum(value::bigint) from jsonb_each_text(payload -> 'tokens'))) as tokens
from (select convert_from(payload, 'UTF8')::jsonb as payload from pricing.consumed_archive) consumed
where payload ? 'funding_agreement_id'
group by 1, 2, 3, 4 order by 1, 3
"""


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


@dataclass(frozen=True)
class ClassTokens:
    token_class: str
    models: str
    """The models that consumed Tokens of this class, comma-separated."""
    tokens: Decimal


async def tokens_by_class(pool: asyncpg.Pool) -> list[ClassTokens]:
    """Tokens consumed per class over everything pricing received, most first."""
    async with pool.acquire() as connection:
        rows = await connection.fetch(SELECT_TOKENS_BY_CLASS)
    return [ClassTokens(row["token_class"], row["models"], row["tokens"]) for row in rows]


@dataclass(frozen=True)
class FundingShare:
    """The consumption one funding agreement put on one payer."""

    agreement: str
    consumer_bu: str
    payer_bu: str
    share_percent: str
    events: int
    tokens: Decimal


async def funding_shares(pool: asyncpg.Pool) -> list[FundingShare]:
    """Consumption split by funding agreements, per agreement and payer."""
    async with pool.acquire() as connection:
        rows = await connection.fetch(SELECT_FUNDING_SHARES)
    return [FundingShare(row["agreement"], row["consumer_bu"], row["payer_bu"], row["share"], row["events"], row["tokens"])
            for row in rows]
