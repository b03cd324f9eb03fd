"""Invoicing's shell: add postings to running totals by billing period; close
periods into invoices (with period tier lines) and months into settlements. Each handler
loads what the core needs, calls it, and writes its results in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, PriceBookPublished, decode
from tokenhub.contracts.periods import Period, PeriodKind, parse
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.topics import INVOICES_ISSUED, SETTLEMENTS_NETTED, TOKENS_PRICED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.outbox import OutboxRow
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.invoicing import domain, queries
from tokenhub.services.invoicing.adapters import store
from tokenhub.services.invoicing.adapters.store import SCHEMA
from tokenhub.services.invoicing.codec import decode_posted

__all__ = ["SCHEMA", "close_period", "handle_posted_records", "handle_pricebook_records", "set_cycle"]

log = structlog.get_logger()


async def handle_posted_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    """Add postings to the running totals, each chain in its order: a sequence seen
    before is a duplicate; one ahead of a missing sequence waits for it."""
    batch = [(decode_posted(record.value), record.value) for record in records]
    async with store.unit(runtime.db()) as unit:
        await unit.lock_against_closes()
        cycles = await unit.cycles()
        chains = await unit.lock_chains([posted.chain for posted, _ in batch])
        zone = runtime.settings.timezone
        invoiced = await unit.invoiced(domain.payer_periods(
            [posted for posted, _ in batch] + [waiting.posted for waiting in chains.waiting], cycles, zone))
        received = domain.receive(batch, watermarks=chains.watermarks, waiting=chains.waiting, invoiced=invoiced,
                                  cycles=cycles, zone=zone)
        await unit.save_received(received, chains, runtime.now())
        await unit.count({"postings": received.applied, "duplicates": received.duplicates,
                          "waiting": len(received.to_wait) - len(received.released)})
    for gap in received.gaps:
        log.warning("chain_gap_waiting", chain=gap.chain, missing_sequence=gap.missing_sequence,
                    waiting_from=gap.waiting_from, waiting=gap.waiting)
    await close_due_periods(runtime)
    log.info("postings_received", received=len(batch), applied=received.applied, duplicates=received.duplicates,
             waiting=len(received.to_wait))


async def handle_pricebook_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    """Price books, for their period tiers: applied at close (docs/architecture.md decision 6)."""
    books = [decode(PriceBookPublished, record.value) for record in records]
    async with store.unit(runtime.db()) as unit:
        await unit.save_books([(book, record.value) for book, record in zip(books, records, strict=True)])


async def close_due_periods(runtime: Runtime) -> list[InvoiceIssued]:
    """Close every billing period whose end plus the allowed lateness the event-time watermark passed."""
    settings = runtime.settings
    async with store.reading(runtime.db()) as unit:
        watermark = await unit.event_time_watermark()
        if watermark is None:
            return []
        due = await unit.due_periods(watermark - timedelta(hours=settings.allowed_lateness_hours))
    issued: list[InvoiceIssued] = []
    for name in due:
        issued += await close_period(runtime.db(), settings, name, actor="watermark", now=runtime.now())
    if issued:
        await runtime.relay()
    return issued


async def close_period(pool: asyncpg.Pool, settings: Settings, period_name: str, *, actor: str, now: datetime) -> list[InvoiceIssued]:
    """Close every billing period that ends by the end of `period_name`: one invoice
    per payer and period, numbered without gaps per payer; postings of earlier
    periods still open become adjustment lines; later ones wait for the next invoice.
    Closing a month also nets it into a settlement."""
    target = parse(period_name, settings.timezone)
    issued: list[InvoiceIssued] = []
    async with store.unit(pool) as unit:
        await unit.lock_invoices()
        books = await unit.books()
        due = await unit.open_payer_periods(target.end)
        for payer_bu, name in due:
            invoice = await _issue(unit, settings, books, payer_bu, parse(name, settings.timezone), now)
            if invoice is not None:
                issued.append(invoice)
        # Postings still open belong to periods invoiced before (late usage, repricing):
        # they go on the payer's invoice for the period being closed, as adjustments and credits.
        for payer_bu in dict.fromkeys(payer_bu for payer_bu, _ in due):
            invoice = await _issue(unit, settings, books, payer_bu, target, now)
            if invoice is not None:
                issued.append(invoice)
        await unit.record_closed(target.name, now, actor)
        settled = await _settle(unit, settings, target, now) if target.kind == "month" else 0
        adjustments = sum(1 for invoice in issued for line in invoice.lines if line.kind == "period_tier")
        await unit.count({"invoices_issued": len(issued), "settlements": settled, "adjustments": adjustments})
    log.info("period_closed", period=target.name, invoices=len(issued), actor=actor)
    return issued


async def _issue(unit: store.Unit, settings: Settings, books: BookIndex, payer_bu: str, period: Period,
                 now: datetime) -> InvoiceIssued | None:
    totals = await unit.open_totals(payer_bu, period.end)
    if not totals.lines and not totals.chains:
        return None  # an earlier period's invoice of this close took them
    invoice = domain.issue_invoice(payer_bu, period, totals, books, number=await unit.next_number(payer_bu),
                                   currency=settings.currency, minor_units=settings.currency_minor_units,
                                   status="issued", issued_at=now)
    payload = canonical_json(invoice)
    if not await unit.save_invoice(invoice, payload, now):
        return None  # issued before: these postings wait for the payer's next invoice
    await unit.assign(invoice)
    await unit.stage([OutboxRow(INVOICES_ISSUED.name, payer_bu.encode(), payload)] + [
        OutboxRow(TOKENS_PRICED.name, payer_bu.encode(), canonical_json(adjustment))
        for adjustment in domain.tier_adjustments(invoice, settings.currency)])
    return invoice


async def _settle(unit: store.Unit, settings: Settings, period: Period, now: datetime) -> int:
    """Net the month's invoiced flows once, when the month closes; published on settlements.netted."""
    settlement = await queries.settlement_of(unit, settings, period)
    payload = canonical_json(settlement)
    if not await unit.save_settlement(settlement, payload, now):
        return 0
    await unit.stage([OutboxRow(SETTLEMENTS_NETTED.name, period.name.encode(), payload)])
    log.info("period_settled", period=period.name, transfers=len(settlement.transfers))
    return 1


async def set_cycle(pool: asyncpg.Pool, payer_bu: str, kind: PeriodKind, actor: str, reason: str, now: datetime) -> None:
    async with store.unit(pool) as unit:
        await unit.set_cycle(payer_bu, kind, actor, reason, now)
