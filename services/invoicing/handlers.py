"""Invoicing's shell: store postings by billing period; close periods into
invoices (with period tier lines) and months into settlements. Each handler
loads what the core needs, calls it, and writes its results in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, LedgerPosted, PriceBookPublished, decode
from tokenhub.contracts.periods import Period, PeriodKind, parse
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.contracts.topics import INVOICES_ISSUED, SETTLEMENTS_NETTED, TOKENS_PRICED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.outbox import OutboxRow
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.invoicing import domain
from tokenhub.services.invoicing.adapters import store
from tokenhub.services.invoicing.adapters.store import SCHEMA

__all__ = ["SCHEMA", "close_period", "draft_invoice", "handle_posted_records", "handle_pricebook_records",
           "month_settlement", "set_cycle"]

log = structlog.get_logger()


async def handle_posted_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    events = [decode(LedgerPosted, record.value) for record in records]
    async with store.unit(runtime.db()) as unit:
        cycles = await unit.cycles()
        periods = domain.billing_periods(events, cycles, runtime.settings.timezone)
        new = await unit.save_postings([(event, period, record.value)  # decoded above, so valid JSON
                                        for event, period, record in zip(events, periods, records, strict=True)])
        await unit.count({"postings": new, "duplicates": len(events) - new})
    await close_due_periods(runtime)
    log.info("postings_received", received=len(events), new=new)


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


async def draft_invoice(connection: asyncpg.Connection, settings: Settings, payer_bu: str, period: Period) -> InvoiceIssued | None:
    """What the payer's invoice for `period` would be if every open period closed now,
    tier reached so far included (`domain.draft_postings` says which postings)."""
    unit = store.Unit(connection)
    open_postings = await unit.payer_open_postings(payer_bu)
    place, postings = domain.draft_postings(open_postings, await unit.invoiced_periods(payer_bu), period)
    if not postings:
        return None
    number = await unit.next_number(payer_bu) + place
    return domain.issue_invoice(payer_bu, period, postings, await unit.books(), number=number,
                                currency=settings.currency, minor_units=settings.currency_minor_units,
                                status="draft", issued_at=None)


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
    postings = await unit.open_postings(payer_bu, period.end)
    if not postings:
        return None  # an earlier period's invoice of this close took them
    invoice = domain.issue_invoice(payer_bu, period, postings, books, number=await unit.next_number(payer_bu),
                                   currency=settings.currency, minor_units=settings.currency_minor_units,
                                   status="issued", issued_at=now)
    payload = canonical_json(invoice)
    if not await unit.save_invoice(invoice, payload, now):
        return None  # issued before: these postings wait for the payer's next invoice
    await unit.assign_postings(invoice)
    # Reversals on this invoice are credit notes for the invoices that carried the charges.
    await unit.mark_credited(domain.reversed_posting_ids(postings), invoice.invoice_id)
    await unit.stage([OutboxRow(INVOICES_ISSUED.name, payer_bu.encode(), payload)] + [
        OutboxRow(TOKENS_PRICED.name, payer_bu.encode(), canonical_json(adjustment))
        for adjustment in domain.tier_adjustments(invoice, settings.currency)])
    return invoice


async def month_settlement(connection: asyncpg.Connection, settings: Settings, month: Period) -> SettlementNetted:
    """The month's settlement from what its invoices carry, period tier lines included:
    netted from the invoices, since their ledger adjustments come back only after the close."""
    unit = store.Unit(connection)
    return domain.build_settlement(month, await unit.month_postings(month), await unit.month_period_tiers(month),
                                   currency=settings.currency, minor_units=settings.currency_minor_units)


async def _settle(unit: store.Unit, settings: Settings, period: Period, now: datetime) -> int:
    """Net the month's invoiced flows once, when the month closes; published on settlements.netted."""
    settlement = domain.build_settlement(period, await unit.month_postings(period), await unit.month_period_tiers(period),
                                         currency=settings.currency, minor_units=settings.currency_minor_units)
    payload = canonical_json(settlement)
    if not await unit.save_settlement(settlement, payload, now):
        return 0
    await unit.stage([OutboxRow(SETTLEMENTS_NETTED.name, period.name.encode(), payload)])
    log.info("period_settled", period=period.name, transfers=len(settlement.transfers))
    return 1


async def set_cycle(pool: asyncpg.Pool, payer_bu: str, kind: PeriodKind, actor: str, reason: str, now: datetime) -> None:
    async with store.unit(pool) as unit:
        await unit.set_cycle(payer_bu, kind, actor, reason, now)
