"""Pricing's shell: archive consumption, price it or park it, stage Priced; one transaction."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import Priced, PriceBookPublished, TokenConsumed, decode
from tokenhub.contracts.topics import TOKENS_PRICED
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.pricing import domain
from tokenhub.services.pricing import reprice as reprice_domain
from tokenhub.services.pricing.adapters import store

SCHEMA = "pricing"
log = structlog.get_logger()
PARKED = Counter("tokenhub_pricing_parked", "Consumption parked for want of a price")
UNPARKED = Counter("tokenhub_pricing_unparked", "Parked consumption priced once a book arrived")
BOOKS = store.BookCache()


async def handle_consumed_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    events = [decode(TokenConsumed, record.value) for record in records]
    async with runtime.db().acquire() as connection, connection.transaction():
        await connection.execute(store.LOCK_BOOKS_SHARED)
        inserted = await connection.fetch(
            store.INSERT_ARCHIVE,
            [event.id for event in events],
            [event.payer_bu for event in events],
            [event.model for event in events],
            [event.event_time for event in events],
            [record.value for record in records],
        )
        new_ids = {row["consumed_id"] for row in inserted}
        fresh = list({event.id: event for event in events if event.id in new_ids}.values())
        books = domain.BookIndex.of(await BOOKS.load(connection))
        priced, parked = await _price_and_park(connection, fresh, books)
        await bump_counters(connection, SCHEMA, {
            "received": len(fresh), "duplicates": len(events) - len(fresh), "priced": len(priced), "parked": len(parked)
        })
    await runtime.relay()
    log.info("consumption_priced", received=len(events), priced=len(priced), parked=len(parked),
             duplicates=len(events) - len(fresh))


async def _price_and_park(
    connection: asyncpg.Connection, consumed: Sequence[TokenConsumed], books: domain.BookIndex
) -> tuple[list[Priced], list[tuple[TokenConsumed, str]]]:
    priced: list[Priced] = []
    parked: list[tuple[TokenConsumed, str]] = []
    for event in consumed:
        try:
            priced.append(domain.price_in_force(event, books))
        except domain.Unpriceable as reason:
            parked.append((event, str(reason)))
    if parked:
        PARKED.inc(len(parked))
        await connection.execute(
            store.INSERT_PARKED,
            [event.id for event, _ in parked],
            [event.model for event, _ in parked],
            [event.event_time for event, _ in parked],
            [reason for _, reason in parked],
        )
    await stage_priced(connection, priced)
    return priced, parked


async def stage_priced(connection: asyncpg.Connection, priced: Sequence[Priced]) -> None:
    if not priced:
        return
    payloads = [canonical_json(event) for event in priced]
    await connection.execute(
        store.INSERT_PRICED,
        [event.id for event in priced],
        [event.consumed_id for event in priced],
        [event.kind for event in priced],
        [event.book_id for event in priced],
        [event.book_version for event in priced],
        [event.total_amount for event in priced],
        payloads,
    )
    await stage(connection, SCHEMA, [
        OutboxRow(TOKENS_PRICED.name, event.payer_bu.encode(), payload) for event, payload in zip(priced, payloads, strict=True)
    ])


async def handle_pricebook_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    """Store new book versions, then price what was parked waiting for them."""
    books = [decode(PriceBookPublished, record.value) for record in records]
    async with runtime.db().acquire() as connection, connection.transaction():
        await connection.execute(store.LOCK_BOOKS_EXCLUSIVE)
        stored = 0
        for book, record in zip(books, records, strict=True):
            stored += await connection.fetchval(
                store.INSERT_BOOK, book.book_id, book.version, book.effective_from, record.value,
                book.retroactive, book.actor, book.reason, book.published_at,
            ) is not None
        index = domain.BookIndex.of(await BOOKS.load(connection))
        waiting = [decode(TokenConsumed, row["payload"]) for row in await connection.fetch(store.SELECT_PARKED_FOR_UPDATE)]
        priced: list[Priced] = []
        for event in waiting:
            try:
                priced.append(domain.price_in_force(event, index))
            except domain.Unpriceable:
                continue
        await connection.execute(store.DELETE_PARKED, [event.consumed_id for event in priced])
        UNPARKED.inc(len(priced))
        await stage_priced(connection, priced)
        await bump_counters(connection, SCHEMA, {"books": stored, "priced": len(priced), "unparked": len(priced)})
    await runtime.relay()
    log.info("pricebook_applied", versions=stored, unparked=len(priced), still_parked=len(waiting) - len(priced))


async def reprice(pool: asyncpg.Pool, start, end, model: str | None) -> tuple[int, int]:  # noqa: ANN001 - datetimes
    """Reverse and correct every current Priced in [start, end) whose price the
    books in force now give differently; one transaction. Returns (examined, corrected)."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(store.LOCK_BOOKS_EXCLUSIVE)
        rows = await connection.fetch(store.SELECT_CURRENT_PRICED, start, end, model)
        books = domain.BookIndex.of(await BOOKS.load(connection))
        corrections = []
        for row in rows:
            outcome = reprice_domain.correct(decode(TokenConsumed, row["consumed"]), decode(Priced, row["priced"]), books)
            if outcome is not None:
                corrections.append(outcome)
        events = [event for outcome in corrections for event in (outcome.reversal, outcome.correction)]
        await stage_priced(connection, events)
        await connection.execute(store.MARK_SUPERSEDED,
                                 [outcome.reversal.corrects_id for outcome in corrections],
                                 [outcome.correction.id for outcome in corrections])
        await bump_counters(connection, SCHEMA, {"reversed": len(corrections), "corrected": len(corrections)})
    log.info("repriced", examined=len(rows), corrected=len(corrections), model=model)
    return len(rows), len(corrections)
