"""Pricing's shell: price consumption or park it, store and stage Priced; one transaction.

`Pricing` is the service: it owns its store (with the books it has read) and
its metrics, and `app.py` makes one per process. `reprice` is the command
that corrects history after a retroactive book."""

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
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from tokenhub.contracts import codecs
from tokenhub.contracts.events import PriceBookPublished, decode
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.pricing import domain
from tokenhub.services.pricing import reprice as reprice_domain
from tokenhub.services.pricing.adapters.store import SCHEMA, PricingStore, PricingUnit

__all__ = ["SCHEMA", "Pricing", "RepriceReport", "reprice"]

log = structlog.get_logger()

UNPARK_PAGE_MAX: Final = 2_000
"""Parked rows loaded at a time while a new book is applied: bounds memory when a
model's consumption was parked for days; every page is in the same transaction."""

REPRICE_PAGE_MAX: Final = 1_000
"""Priced rows examined per repricing transaction: bounds the row locks held and the
memory used, so a window of millions of consumptions is corrected page by page."""


@dataclass(frozen=True)
class PricingMetrics:
    parked: Counter
    unparked: Counter
    parked_now: Gauge
    books_refused: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PricingMetrics:
        return cls(
            parked=Counter("tokenhub_pricing_parked", "Consumption parked for want of a price", registry=registry),
            unparked=Counter("tokenhub_pricing_unparked", "Parked consumption priced once a book arrived",
                             registry=registry),
            parked_now=Gauge("tokenhub_pricing_parked_now", "Consumption waiting for a price, read after each change",
                             registry=registry),
            books_refused=Counter("tokenhub_pricing_books_refused",
                                  "Price book versions refused: not in the settlement currency", registry=registry),
        )


class Pricing:
    def __init__(self, runtime: Runtime, registry: CollectorRegistry = REGISTRY) -> None:
        self.runtime = runtime
        self.store = PricingStore(runtime.db)
        self.metrics = PricingMetrics.create(registry)

    async def handle_consumed_records(self, records: Sequence[ConsumerRecord]) -> None:
        received = [(codecs.decode_consumed(record.value), record.value) for record in records]
        consumed = domain.first_copies(received)
        inputs = {event.id: (event, value) for event, value in consumed}
        async with self.store.unit(books="shared") as unit:
            priced, unpriceable = domain.price_or_park([event for event, _ in consumed], await unit.books())
            # Stored once each: a redelivered consumption is priced to the id stored
            # before, or finds its parked row; either way nothing is staged again.
            stored = await unit.save_priced([(event, inputs[event.consumed_id][0].request_input_tokens) for event in priced])
            parked = await unit.park([(event, inputs[event.id][1], reason) for event, reason in unpriceable])
            fresh = len(stored) + len(parked)
            await unit.count({"received": fresh, "duplicates": len(received) - fresh, "priced": len(stored),
                              "parked": len(parked)})
            parked_now = await unit.parked_count() if parked else None
        # Metrics only after the commit: a batch rolled back and retried counts once.
        if parked_now is not None:
            self.metrics.parked.inc(len(parked))
            self.metrics.parked_now.set(parked_now)
        self.runtime.relay_soon()
        log.info("consumption_priced", received=len(received), priced=len(stored), parked=len(parked),
                 duplicates=len(received) - fresh)

    async def handle_pricebook_records(self, records: Sequence[ConsumerRecord]) -> None:
        """Store new book versions, then price what was parked waiting for them."""
        received = [(decode(PriceBookPublished, record.value), record.value) for record in records]
        async with self.store.unit(books="exclusive") as unit:
            currency = await unit.settlement_currency() or self.runtime.settings.currency
            in_currency, refused = domain.in_settlement_currency(received, currency)
            await unit.refuse_books(refused)
            # Refused, like bad usage: kept with its bytes and reason, and on the
            # dead-letter topic where operators and the dashboard see it.
            by_value = {record.value: record for record in records}
            for _, value, reason in refused:
                await self.runtime.dead_letter(by_value[value], reason)
            stored, conflicts = await unit.store_books(in_currency)
            models = sorted({entry.model for book in stored for entry in book.models})
            unparked, still_parked = await _unpark(unit, models) if models else (0, 0)
            await unit.count({"books": len(stored), "book_conflicts": len(conflicts), "books_refused": len(refused),
                              "priced": unparked, "unparked": unparked})
            parked_now = await unit.parked_count() if models else None
        for _, _, reason in refused:
            log.error("pricebook_refused", reason=reason)
        self.metrics.books_refused.inc(len(refused))
        for book in conflicts:
            # A version never changes once stored: a different body under the same
            # number is refused here (the CLI refuses it before publishing too).
            log.error("pricebook_version_conflict", book_id=book.book_id, version=book.version)
        if parked_now is not None:
            self.metrics.unparked.inc(unparked)
            self.metrics.parked_now.set(parked_now)
        self.runtime.relay_soon()
        log.info("pricebook_applied", versions=len(stored), unparked=unparked, still_parked=still_parked,
                 conflicts=len(conflicts), refused=len(refused))


async def _unpark(unit: PricingUnit, models: list[str]) -> tuple[int, int]:
    """Price the parked consumption of `models` that the books now price. Returns (priced, still parked)."""
    books = await unit.books()
    priced_total = still_parked = 0
    after = (datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
    while True:
        page = await unit.parked_page(models, after, UNPARK_PAGE_MAX)
        if not page:
            break
        after = (page[-1].event_time, page[-1].consumed.id)
        priced, parked = domain.price_or_park([item.consumed for item in page], books)
        request_input = {item.consumed.id: item.consumed.request_input_tokens for item in page}
        await unit.unpark([event.consumed_id for event in priced])
        await unit.save_priced([(event, request_input[event.consumed_id]) for event in priced])
        priced_total += len(priced)
        still_parked += len(parked)
        if len(page) < UNPARK_PAGE_MAX:
            break
    return priced_total, still_parked


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
    store = PricingStore(lambda: pool)
    report = RepriceReport()
    after = (start - timedelta(microseconds=1), uuid.UUID(int=0))
    while True:
        page, after, count = await _reprice_page(store, start, end, model, after)
        report += page
        if after_page is not None and page.corrected:
            await after_page()
        if count < REPRICE_PAGE_MAX:
            break
    log.info("repriced", examined=report.examined, corrected=report.corrected, unpriceable=report.unpriceable,
             difference=str(report.difference), model=model, start=start.isoformat(), end=end.isoformat())
    return report


async def _reprice_page(store: PricingStore, start: datetime, end: datetime, model: str | None,
                        after: tuple[datetime, uuid.UUID]) -> tuple[RepriceReport, tuple[datetime, uuid.UUID], int]:
    # Shared: consumption keeps being priced meanwhile; no book can be stored mid-page.
    async with store.unit(books="shared") as unit:
        page = await unit.current_priced_page(start, end, model, after, REPRICE_PAGE_MAX)
        if not page:
            return RepriceReport(), after, 0
        corrections, unpriceable = reprice_domain.correct_all([(item.consumption, item.priced) for item in page],
                                                              await unit.books())
        request_input = {item.consumption.id: item.consumption.request_input_tokens for item in page}
        await unit.save_priced([(event, request_input[event.consumed_id]) for outcome in corrections
                                for event in (outcome.reversal, outcome.correction)])
        await unit.mark_superseded([(outcome.reversal.corrects_id, outcome.correction.id) for outcome in corrections])
        await unit.count({"reversed": len(corrections), "corrected": len(corrections),
                          "reprice_unpriceable": len(unpriceable)})
    for priced, reason in unpriceable:
        log.warning("reprice_unpriceable", priced_id=str(priced.id), reason=reason)
    report = RepriceReport(len(page), len(corrections), len(unpriceable),
                           sum((outcome.difference for outcome in corrections), Decimal(0)))
    return report, (page[-1].event_time, page[-1].priced.id), len(page)
