"""Invoicing's read side, for the CLI, the HTTP API and pages: invoices issued
and drafts of the open periods, month-to-date spend, settlements, and the
chains waiting for a missing sequence. Read-only; SQL stays in the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine
from tokenhub.contracts.periods import Period, parse
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.infra.settings import Settings
from tokenhub.services.invoicing import domain
from tokenhub.services.invoicing.adapters import store
from tokenhub.services.invoicing.adapters.store import WaitingChain


async def draft_invoice(connection: asyncpg.Connection, settings: Settings, payer_bu: str, period: Period) -> InvoiceIssued | None:
    """What the payer's invoice for `period` would be if every open period closed now,
    tier reached so far included (`domain.draft_of` says which totals it carries)."""
    unit = store.Unit(connection)
    totals = await unit.payer_open_totals(payer_bu)
    draft = domain.draft_of(totals.periods, await unit.invoiced_periods(payer_bu), period)
    carried = totals.of_periods(draft.periods)
    if not carried.lines and not carried.chains:
        return None
    number = await unit.next_number(payer_bu) + draft.place
    return domain.issue_invoice(payer_bu, period, carried, await unit.books(), number=number,
                                currency=settings.currency, minor_units=settings.currency_minor_units,
                                status="draft", issued_at=None)


async def invoices(pool: asyncpg.Pool, settings: Settings, *, bu: str | None, period: str | None) -> list[InvoiceIssued]:
    """Issued invoices, then drafts of the open periods."""
    async with store.reading(pool) as unit:
        issued = await unit.issued_invoices()
        drafts = []
        for payer_bu, name in await unit.draft_periods():
            draft = await draft_invoice(unit.connection, settings, payer_bu, parse(name, settings.timezone))
            if draft is not None:
                drafts.append(draft)
    return [invoice for invoice in issued + drafts
            if (bu is None or invoice.payer_bu == bu) and (period is None or invoice.period == period)]


async def month_settlement(connection: asyncpg.Connection, settings: Settings, month: Period) -> SettlementNetted:
    """The month's settlement from what its invoices carry, period tier lines included:
    netted from the invoices, since their ledger adjustments come back only after the close."""
    return await settlement_of(store.Unit(connection), settings, month)


async def settlement_of(unit: store.Unit, settings: Settings, month: Period) -> SettlementNetted:
    flows = domain.invoiced_flows(await unit.month_totals(month))
    return domain.build_settlement(month, flows, await unit.month_period_tiers(month),
                                   currency=settings.currency, minor_units=settings.currency_minor_units)


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
