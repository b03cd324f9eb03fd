"""Invoicing's shell: add postings to running totals by billing period; close
periods into invoices (with period tier lines) and months into settlements. Each handler
loads what the core needs, calls it, and writes its results in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, PriceBookPublished, decode
from tokenhub.contracts.periods import Period, PeriodKind, containing, parse
from tokenhub.contracts.topics import INVOICES_ISSUED, SETTLEMENTS_NETTED, TOKENS_PRICED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.outbox import OutboxRow
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.invoicing import domain, queries
from tokenhub.services.invoicing.adapters import store
from tokenhub.services.invoicing.adapters.store import SCHEMA
from tokenhub.services.invoicing.codec import decode_posted

__all__ = ["SCHEMA", "close_period", "handle_posted_records", "handle_pricebook_records", "set_cycle"]

PLAN_LOOKBACK: Final = timedelta(days=31)
"""How far back the question asked after every batch looks for plan periods due."""

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
    """Close every billing period whose end plus the allowed lateness the event-time
    watermark passed, and every period a plan covers that the same horizon passed."""
    settings = runtime.settings
    now = runtime.now()
    async with store.reading(runtime.db()) as unit:
        watermark = await unit.event_time_watermark()
        if watermark is None:
            return []
        horizon = domain.close_horizon(watermark, now, settings.allowed_lateness_hours)
        open_totals = await unit.open_payer_periods(horizon)
        plans = await unit.plans()
        invoiced = await unit.invoiced_of([payer_bu for payer_bu, _ in open_totals] + [plan.payer_bu for plan in plans])
        due = domain.due_periods(open_totals, invoiced, settings.timezone)
        if plans:
            # A month back: the periods before were due at earlier batches, and a close
            # (by command or at a month's end) looks over every plan from its start.
            planned = domain.plan_periods(plans, await unit.cycles(), invoiced, horizon, settings.timezone,
                                          since=horizon - PLAN_LOOKBACK)
            due = list(dict.fromkeys(due + [period.name for _, period in planned]))
    issued: list[InvoiceIssued] = []
    for name in due:
        issued += await close_period(runtime.db(), settings, name, actor="watermark", now=now)
    if issued:
        await runtime.relay()
    return issued


async def close_period(pool: asyncpg.Pool, settings: Settings, period_name: str, *, actor: str, now: datetime,
                       early: bool = False) -> list[InvoiceIssued]:
    """Close every billing period that ends by the end of `period_name`: one invoice
    per payer and period, numbered without gaps per payer; postings of earlier
    periods still open become adjustment lines (with their period's tier charge
    re-evaluated); later ones wait for the next invoice. Every period a plan covers
    gets its tier lines, with or without usage. A period that has not ended is
    closed only when `early` says it is meant (`domain.PeriodNotEnded`).

    Closing a month nets it into a settlement; a month settled before whose
    invoices this close adds to is settled again, with the next revision number."""
    zone = settings.timezone
    target = parse(period_name, zone)
    domain.check_close(target, now, early=early)
    async with store.unit(pool) as unit:
        await unit.lock_invoices()
        books = await unit.books()
        plans = await unit.plans()
        with_usage = await unit.open_payer_periods(target.end)
        payers = sorted({payer_bu for payer_bu, _ in with_usage} | {plan.payer_bu for plan in plans})
        invoiced = await unit.invoiced_of(payers)
        due: dict[str, dict[str, Period]] = {}
        for payer_bu, name in with_usage:
            due.setdefault(payer_bu, {})[name] = parse(name, zone)
        if plans:
            for payer_bu, period in domain.plan_periods(plans, await unit.cycles(), invoiced, target.end, zone):
                due.setdefault(payer_bu, {})[period.name] = period
        totals = await unit.open_totals_of(sorted(due), target.end)
        numbers = await unit.next_numbers(sorted(due))
        closings: list[domain.Closing] = []
        for payer_bu in sorted(due):
            held = totals.get(payer_bu, domain.PeriodTotals())
            mine = {name for payer, name in invoiced if payer == payer_bu}
            late = await unit.tier_states(payer_bu, {name: parse(name, zone) for name in held.periods if name in mine})
            closings += domain.close_payer(
                payer_bu, list(due[payer_bu].values()), target, held, number=numbers.get(payer_bu, 1), invoiced=mine,
                books=books, plans=plans, late=late, zone=zone, currency=settings.currency,
                minor_units=settings.currency_minor_units, now=now)
        closings = domain.in_close_order(closings)
        issued = [closing.invoice for closing in closings]
        payloads = [canonical_json(invoice) for invoice in issued]
        await unit.save_invoices(issued, payloads, now)
        await unit.assign_all(closings)
        await unit.stage([row for invoice, payload in zip(issued, payloads, strict=True) for row in [
            OutboxRow(INVOICES_ISSUED.name, invoice.payer_bu.encode(), payload), *(
                OutboxRow(TOKENS_PRICED.name, invoice.payer_bu.encode(), canonical_json(adjustment))
                for adjustment in domain.tier_adjustments(invoice, settings.currency))]])
        await unit.record_closed(target.name, now, actor)
        settled = await _settle(unit, settings, target, issued, now)
        adjustments = sum(1 for invoice in issued for line in invoice.lines if line.kind == "period_tier")
        await unit.count({"invoices_issued": len(issued), "settlements": settled, "adjustments": adjustments})
    log.info("period_closed", period=target.name, invoices=len(issued), actor=actor, early=now < target.end)
    return issued


async def _settle(unit: store.Unit, settings: Settings, target: Period, issued: Sequence[InvoiceIssued],
                  now: datetime) -> int:
    """Net every month this close ends (the target's, or one whose periods it issued
    invoices for and which ended by the target's end), and settle again, with the
    next revision, a month settled before for which this close issued more
    invoices; each published on settlements.netted."""
    zone = settings.timezone
    fresh = {domain.month_of(parse(invoice.period, zone), zone) for invoice in issued}
    months = fresh | ({target.name} if target.kind == "month" else set())
    settled = 0
    for name in sorted(months):
        month = parse(name, zone)
        latest = await unit.settlement(month)
        if latest is None and month.end > target.end:
            continue  # not over yet: it is settled when it closes
        if latest is not None and name not in fresh:
            continue  # settled, and nothing new for it
        revision = 1 if latest is None else latest.revision + 1
        settlement = await queries.settlement_of(unit, settings, month, revision=revision)
        payload = canonical_json(settlement)
        if not await unit.save_settlement(settlement, payload, now):
            continue
        await unit.stage([OutboxRow(SETTLEMENTS_NETTED.name, name.encode(), payload)])
        log.info("period_settled", period=name, revision=revision, invoices=len(settlement.invoices),
                 transfers=len(settlement.transfers))
        settled += 1
    return settled


async def assign_plan(pool: asyncpg.Pool, settings: Settings, *, payer_bu: str, book_id: str, model: str,
                      provider_bu: str, first_month: str, last_month: str | None, actor: str, reason: str,
                      now: datetime) -> domain.Plan:
    """Assign a payer to a book's period tiers for a model over a range of months
    (`domain.assign_plan` says when it cannot be)."""
    zone = settings.timezone
    async with store.unit(pool) as unit:
        await unit.lock_invoices()
        plan = domain.assign_plan(await unit.plans(), payer_bu=payer_bu, book_id=book_id, model=model,
                                  provider_bu=provider_bu, first=parse(first_month, zone),
                                  last=parse(last_month, zone) if last_month else None, books=await unit.books(),
                                  actor=actor, reason=reason, now=now, zone=zone)
        await unit.save_plan(plan)
    log.info("plan_assigned", payer=payer_bu, book=book_id, model=model, first=plan.first_month,
             last=plan.last_month, actor=actor)
    return plan


async def end_plan(pool: asyncpg.Pool, settings: Settings, *, payer_bu: str, model: str, last_month: str, actor: str,
                   reason: str, now: datetime) -> domain.Plan:
    """End the payer's plan for a model that is running now with month `last_month`."""
    zone = settings.timezone
    async with store.unit(pool) as unit:
        await unit.lock_invoices()
        current = containing(now, "month", zone).name
        running = [plan for plan in await unit.plans() if plan.payer_bu == payer_bu and plan.model == model
                   and (plan.last_month is None or plan.last_month >= current)]
        if not running:
            raise domain.PlanError(f"{payer_bu} has no plan for {model} running in {current} or later")
        plan = domain.end_plan(running[0], parse(last_month, zone), now)
        await unit.save_plan_end(plan, actor, reason, now)
    log.info("plan_ended", payer=payer_bu, model=model, last=plan.last_month, actor=actor)
    return plan


async def set_cycle(pool: asyncpg.Pool, payer_bu: str, kind: PeriodKind, actor: str, reason: str, now: datetime) -> None:
    async with store.unit(pool) as unit:
        await unit.set_cycle(payer_bu, kind, actor, reason, now)
