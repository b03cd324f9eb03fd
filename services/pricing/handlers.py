"""Pricing's shell: archive consumption, price it or park it, stage Priced; one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge

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
PARKED_NOW = Gauge("tokenhub_pricing_parked_now", "Consumption waiting for a price, read after each change")
BOOKS = store.BookCache()


async def handle_consumed_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    events = [decode(TokenConsumed, record.value) for record in records]
    async with runtime.db().acquire() as connection, connection.transaction():
        await connection.execute(store.LOCK_BOOKS_SHARED)
        first_copies: dict[uuid.UUID, tuple[TokenConsumed, bytes]] = {}
        for event, record in zip(events, records, strict=True):
            first_copies.setdefault(event.id, (event, record.value))
        new_ids = await store.archive_consumed(connection, [
            (event.id, event.payer_bu, event.model, event.event_time, value) for event, value in first_copies.values()])
        fresh = [event for event_id, (event, _) in first_copies.items() if event_id in new_ids]
        books = domain.BookIndex.of(await BOOKS.load(connection))
        priced, parked = await _price_and_park(connection, fresh, books)
        await bump_counters(connection, SCHEMA, {
            "received": len(fresh), "duplicates": len(events) - len(fresh), "priced": len(priced), "parked": len(parked)
        })
        parked_now = await connection.fetchval(store.COUNT_PARKED) if parked else None
    # Metrics only after the commit: a batch rolled back and retried counts once.
    if parked_now is not None:
        PARKED.inc(len(parked))
        PARKED_NOW.set(parked_now)
    runtime.relay_soon()
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
    await store.insert_priced(connection, [
        (event.id, event.consumed_id, event.kind, event.book_id, event.book_version, event.total_amount, payload)
        for event, payload in zip(priced, payloads, strict=True)])
    await stage(connection, SCHEMA, [
        OutboxRow(TOKENS_PRICED.name, event.payer_bu.encode(), payload) for event, payload in zip(priced, payloads, strict=True)
    ])


async def handle_pricebook_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    """Store new book versions, then price what was parked waiting for them."""
    books = [decode(PriceBookPublished, record.value) for record in records]
    async with runtime.db().acquire() as connection, connection.transaction():
        await connection.execute(store.LOCK_BOOKS_EXCLUSIVE)
        stored: list[PriceBookPublished] = []
        conflicts = 0
        for book, record in zip(books, records, strict=True):
            if await connection.fetchval(
                store.INSERT_BOOK, book.book_id, book.version, book.effective_from, record.value,
                book.retroactive, book.actor, book.reason, book.published_at,
            ) is not None:
                stored.append(book)
            elif (await connection.fetchval(store.SELECT_BOOK_VERSION, book.book_id, book.version)) != record.value:
                # A version never changes once stored: a different body under the same
                # number is refused here (the CLI refuses it before publishing too).
                conflicts += 1
                log.error("pricebook_version_conflict", book_id=book.book_id, version=book.version)
        index = domain.BookIndex.of(await BOOKS.load(connection))
        models = sorted({entry.model for book in stored for entry in book.models})
        unparked, still_parked = await _unpark(connection, models, index) if models else (0, 0)
        await bump_counters(connection, SCHEMA, {"books": len(stored), "book_conflicts": conflicts,
                                                 "priced": unparked, "unparked": unparked})
        parked_now = await connection.fetchval(store.COUNT_PARKED) if models else None
    if parked_now is not None:
        UNPARKED.inc(unparked)
        PARKED_NOW.set(parked_now)
    runtime.relay_soon()
    log.info("pricebook_applied", versions=len(stored), unparked=unparked, still_parked=still_parked,
             conflicts=conflicts)


UNPARK_PAGE_MAX: Final = 2_000
"""Parked rows loaded at a time while a new book is applied: bounds memory when a
model's consumption was parked for days; every page is in the same transaction."""


async def _unpark(connection: asyncpg.Connection, models: list[str], index: domain.BookIndex) -> tuple[int, int]:
    """Price the parked consumption of `models` that the books now price. Returns (priced, still parked)."""
    priced_total = still_parked = 0
    after = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
    while True:
        rows = await connection.fetch(store.SELECT_PARKED_FOR_MODELS, models, *after, UNPARK_PAGE_MAX)
        if not rows:
            break
        after = (rows[-1]["event_time"], rows[-1]["consumed_id"])
        priced: list[Priced] = []
        for row in rows:
            try:
                priced.append(domain.price_in_force(decode(TokenConsumed, row["payload"]), index))
            except domain.Unpriceable:
                still_parked += 1
        await connection.execute(store.DELETE_PARKED, [event.consumed_id for event in priced])
        await stage_priced(connection, priced)
        priced_total += len(priced)
        if len(rows) < UNPARK_PAGE_MAX:
            break
    return priced_total, still_parked


REPRICE_PAGE_MAX: Final = 1_000
"""Priced rows examined per repricing transaction: bounds the row locks held and the
memory used, so a window of millions of consumptions is corrected page by page."""


@dataclass(frozen=True)
class RepriceReport:
    examined: int = 0
    corrected: int = 0
    unpriceable: int = 0
    difference: Decimal = Decimal(0)

    def __add__(self, other: RepriceReport) -> RepriceReport:
        return RepriceReport(self.examined + other.examined, self.corrected + other.corrected,
                             self.unpriceable + other.unpriceable, self.difference + other.difference)


async def reprice(pool: asyncpg.Pool, start: datetime, end: datetime, model: str | None,
                  after_page: Callable[[], Awaitable[object]] | None = None) -> RepriceReport:
    """Reverse and correct every current Priced with event time in [start, end)
    whose price the books in force now give differently, page by page, each page
    one transaction with its outbox rows. `after_page` (the relay) runs after each."""
    report = RepriceReport()
    after = (start - timedelta(microseconds=1), uuid.UUID(int=0))
    while True:
        page, after, count = await _reprice_page(pool, start, end, model, after)
        report += page
        if after_page is not None and page.corrected:
            await after_page()
        if count < REPRICE_PAGE_MAX:
            break
    log.info("repriced", examined=report.examined, corrected=report.corrected, unpriceable=report.unpriceable,
             difference=str(report.difference), model=model, start=start.isoformat(), end=end.isoformat())
    return report


async def _reprice_page(pool: asyncpg.Pool, start: datetime, end: datetime, model: str | None,
                        after: tuple[datetime, uuid.UUID]) -> tuple[RepriceReport, tuple[datetime, uuid.UUID], int]:
    async with pool.acquire() as connection, connection.transaction():
        # Shared: consumption keeps being priced meanwhile; no book can be stored mid-page.
        await connection.execute(store.LOCK_BOOKS_SHARED)
        rows = await connection.fetch(store.SELECT_CURRENT_PRICED, start, end, model, *after, REPRICE_PAGE_MAX)
        if not rows:
            return RepriceReport(), after, 0
        books = domain.BookIndex.of(await BOOKS.load(connection))
        corrections: list[reprice_domain.Correction] = []
        unpriceable = 0
        for row in rows:
            consumed, current = decode(TokenConsumed, row["consumed"]), decode(Priced, row["priced"])
            try:
                outcome = reprice_domain.correct(consumed, current, books)
            except domain.Unpriceable as reason:
                unpriceable += 1
                log.warning("reprice_unpriceable", priced_id=str(current.id), reason=str(reason))
                continue
            if outcome is not None:
                corrections.append(outcome)
        await stage_priced(connection, [event for outcome in corrections
                                        for event in (outcome.reversal, outcome.correction)])
        await connection.execute(store.MARK_SUPERSEDED,
                                 [outcome.reversal.corrects_id for outcome in corrections],
                                 [outcome.correction.id for outcome in corrections])
        await bump_counters(connection, SCHEMA, {"reversed": len(corrections), "corrected": len(corrections),
                                                 "reprice_unpriceable": unpriceable})
    report = RepriceReport(len(rows), len(corrections), unpriceable,
                           sum((outcome.difference for outcome in corrections), Decimal(0)))
    return report, (rows[-1]["event_time"], rows[-1]["priced_id"]), len(rows)
