"""Invoicing's read side, for the CLI, the HTTP API and pages: invoices issued
and drafts of the open periods, month-to-date spend, settlements, and the
chains waiting for a missing sequence. Read-only; SQL stays in the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine
from tokenhub.contracts.periods import Period, billing_period, parse
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.invoicing import domain
from tokenhub.services.invoicing.adapters import store
from tokenhub.services.invoicing.adapters.store import WaitingChain


async def _drafts(unit: store.Unit, settings: Settings, payer_bu: str, now: datetime) -> list[InvoiceIssued]:
    """The payer's drafts (`domain.drafts_of`): what each open period's invoice would
    be if it closed now, tier reached so far included, each with its own number."""
    zone = settings.timezone
    totals = await unit.payer_open_totals(payer_bu)
    invoiced = await unit.invoiced_periods(payer_bu)
    periods = {name: parse(name, zone) for name in totals.periods}
    cycle = (await unit.cycles()).get(payer_bu, domain.DEFAULT_CYCLE)
    carrier = domain.carrier_period(billing_period(now, cycle, zone), invoiced, zone)
    plans = await unit.plans()
    books = await unit.books()
    number = await unit.next_number(payer_bu)
    drafts = []
    planned = any(plan.covers(payer_bu, carrier, zone) for plan in plans)
    for draft in domain.drafts_of(periods, invoiced, carrier, planned):
        carried = totals.of_periods(set(draft.periods))
        earlier = {name: periods[name] for name in draft.periods if name != draft.period.name}
        drafts.append(domain.issue_invoice(
            payer_bu, draft.period, carried, books, number=number + draft.place, currency=settings.currency,
            minor_units=settings.currency_minor_units, status="draft", issued_at=None, plans=plans, zone=zone,
            late=await unit.tier_states(payer_bu, earlier), late_periods=earlier))
    return drafts


async def draft_invoice(connection: asyncpg.Connection, settings: Settings, payer_bu: str, period: Period,
                        now: datetime | None = None) -> InvoiceIssued | None:
    """The payer's draft for `period`, if it has one."""
    drafts = await _drafts(store.Unit(connection), settings, payer_bu, now or clock(settings))
    return next((draft for draft in drafts if draft.period == period.name), None)


async def invoices(pool: asyncpg.Pool, settings: Settings, *, bu: str | None, period: str | None) -> list[InvoiceIssued]:
    """Issued invoices, then the drafts of every payer with open totals."""
    now = clock(settings)
    async with store.reading(pool) as unit:
        issued = await unit.issued_invoices()
        drafts = []
        payers = [payer for payer, _ in await unit.draft_periods()] + [plan.payer_bu for plan in await unit.plans()]
        for payer_bu in dict.fromkeys(payers):
            if bu is None or payer_bu == bu:
                drafts += await _drafts(unit, settings, payer_bu, now)
    return [invoice for invoice in issued + drafts
            if (bu is None or invoice.payer_bu == bu) and (period is None or invoice.period == period)]


async def month_settlement(connection: asyncpg.Connection, settings: Settings, month: Period) -> SettlementNetted:
    """The month's settlement from what its invoices carry, period tier lines included:
    netted from the invoices, since their ledger adjustments come back only after the close."""
    return await settlement_of(store.Unit(connection), settings, month)


async def settlement_of(unit: store.Unit, settings: Settings, month: Period, *, revision: int = 1) -> SettlementNetted:
    return domain.build_settlement(month, await unit.month_flows(month), await unit.month_period_tiers(month),
                                   currency=settings.currency, minor_units=settings.currency_minor_units,
                                   revision=revision, invoices=await unit.month_invoice_ids(month))


async def settlement(pool: asyncpg.Pool, settings: Settings, month: Period) -> tuple[SettlementNetted, bool]:
    """The issued settlement of a closed month (final), or a provisional one from what is invoiced so far."""
    async with store.reading(pool) as unit:
        stored = await unit.settlement(month)
        if stored is not None:
            return stored, True
        return await month_settlement(unit.connection, settings, month), False


@dataclass(frozen=True)
class Spend:
    """Month to date: the payer's Tokens and amounts by consumer, app, model and
    class, and the period tier its running total has reached."""

    rows: list[dict]
    period_tiers: list[InvoiceLine]

    @property
    def total(self) -> Decimal:
        return sum((row["amount"] for row in self.rows), Decimal(0))

    @property
    def overage(self) -> Decimal:
        """Of the total, what was posted while the payer's quota was exhausted: a mark, not a second charge."""
        return sum((row["overage"] for row in self.rows), Decimal(0))


async def spend(pool: asyncpg.Pool, settings: Settings, payer_bu: str, month: Period) -> Spend:
    async with store.reading(pool) as unit:
        rows = await unit.spend(payer_bu, month)
        draft = await draft_invoice(unit.connection, settings, payer_bu, month)
    tiers = [line for line in (draft.lines if draft else ()) if line.kind == "period_tier" and line.period == month.name]
    return Spend(rows, tiers)


async def waiting_chains(pool: asyncpg.Pool) -> list[WaitingChain]:
    """Chains whose postings wait for a missing sequence (invoicing logs `chain_gap_waiting`)."""
    async with store.reading(pool) as unit:
        return await unit.waiting_chains()


async def plans(pool: asyncpg.Pool, *, bu: str | None = None) -> list[dict]:
    """Plans as assigned and ended, who did it and why."""
    async with store.reading(pool) as unit:
        return [row for row in await unit.plan_rows() if bu is None or row["payer_bu"] == bu]


async def settled_months(pool: asyncpg.Pool) -> list[dict]:
    """Each settled month once: its latest revision and when it was settled."""
    async with store.reading(pool) as unit:
        return await unit.settled_months()
