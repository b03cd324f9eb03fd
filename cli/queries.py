"""Read-only queries for people. Tools may read every schema (docs/architecture.md).
Replay and verify live in `tokenhub.audit`, with their own code."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

import asyncpg

from tokenhub.contracts.events import InvoiceIssued
from tokenhub.infra.settings import Settings
from tokenhub.services.invoicing import queries as invoicing_queries

SELECT_PROJECTION: Final = "select ledger, account, debit_total, credit_total from ledger.balances"
SELECT_AS_OF: Final = """
select p.ledger, p.account, sum(p.debit) as debit_total, sum(p.credit) as credit_total
from ledger.postings p join ledger.entries e using (entry_id)
where e.{column} <= $1
group by p.ledger, p.account
"""
SELECT_NAMES: Final = "select bu_id, display_name from metering.business_units"

FIGURES: Final = ("spend", "revenue", "tokens_consumed", "tokens_served")


@dataclass(frozen=True)
class BalanceRow:
    bu: str
    display_name: str
    spend: Decimal
    revenue: Decimal
    tokens_consumed: int
    tokens_served: int

    @property
    def net(self) -> Decimal:
        return self.revenue - self.spend


def figures_from_accounts(rows: list[asyncpg.Record]) -> dict[str, dict[str, Decimal]]:
    """Per BU: spend and consumed are debit balances, revenue and served credit balances."""
    figures: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(FIGURES, Decimal(0)))
    for row in rows:
        _, bu, kind = row["account"].split(":", 2)
        debit_balance = row["debit_total"] - row["credit_total"]
        name = {"spend": "spend", "revenue": "revenue", "consumed": "tokens_consumed", "served": "tokens_served"}[kind]
        figures[bu][name] += debit_balance if kind in ("spend", "consumed") else -debit_balance
    return figures


async def balances(pool: asyncpg.Pool, *, bu: str | None = None, as_of: datetime | None = None,
                   by: str = "event-time") -> list[BalanceRow]:
    async with pool.acquire() as connection:
        if as_of is None:
            rows = await connection.fetch(SELECT_PROJECTION)
        else:
            column = "event_time" if by == "event-time" else "posted_at"
            rows = await connection.fetch(SELECT_AS_OF.format(column=column), as_of)
        names = {row["bu_id"]: row["display_name"] for row in await connection.fetch(SELECT_NAMES)}
    figures = figures_from_accounts(rows)
    if bu is not None and bu in names:
        # A registered BU with nothing posted (yet, as of that time) has zero balances, not none.
        figures.setdefault(bu, dict.fromkeys(FIGURES, Decimal(0)))
    return [
        BalanceRow(name, names.get(name, name), values["spend"], values["revenue"],
                   int(values["tokens_consumed"]), int(values["tokens_served"]))
        for name, values in sorted(figures.items())
        if bu is None or name == bu
    ]


async def display_names(pool: asyncpg.Pool) -> dict[str, str]:
    """Business units' display names by slug, from the registry metering keeps."""
    async with pool.acquire() as connection:
        return {row["bu_id"]: row["display_name"] for row in await connection.fetch(SELECT_NAMES)}


async def invoices(pool: asyncpg.Pool, settings: Settings, *, bu: str | None, period: str | None) -> list[InvoiceIssued]:
    """Issued invoices, then drafts of the open periods."""
    return await invoicing_queries.invoices(pool, settings, bu=bu, period=period)
