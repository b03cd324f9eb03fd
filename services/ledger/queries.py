"""The ledger's read side, for the CLI, the HTTP API and pages: balances per
business unit (now, or as of an event or posting time) and budgets with their
month-to-date spend. Reads the ledger's own schema only; display names come
from metering's registry through `services.metering.queries`. The auditor's
statement and replay live in `tokenhub.audit`, with code of their own."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

import asyncpg

from tokenhub.contracts.accounts import DEBIT_NORMAL, parse_account
from tokenhub.contracts.budgets import WHOLE_PAYER, BudgetSet
from tokenhub.services.ledger.budgets import in_force, scope_spend

TimeBasis = Literal["event-time", "posting-time"]
"""Which time an as-of balance counts entries by."""

SELECT_PROJECTION: Final = "select ledger, account, debit_total, credit_total from ledger.balances"
# The journal holds one transfer per ledger per entry (debit account, credit
# account, quantity); account totals sum both sides of each. The block-range
# indexes on event and posting time serve the bound.
SELECT_AS_OF: Final = """
select legs.ledger, legs.account, sum(legs.debit) as debit_total, sum(legs.credit) as credit_total
from ledger.journal j,
     lateral (values ('money', j.money_debit, j.amount, 0::numeric), ('money', j.money_credit, 0::numeric, j.amount),
                     ('tokens', j.tokens_debit, j.tokens::numeric, 0::numeric),
                     ('tokens', j.tokens_credit, 0::numeric, j.tokens::numeric)) as legs(ledger, account, debit, credit)
where j.{column} <= $1
group by legs.ledger, legs.account
"""
_COLUMNS: Final[dict[str, str]] = {"event-time": "event_time", "posting-time": "posted_at"}
_FIGURE_OF_KIND: Final = {"spend": "spend", "revenue": "revenue", "consumed": "tokens_consumed", "served": "tokens_served"}

SELECT_BUDGETS: Final = "select payload, received_at from ledger.budgets where $1::text is null or payer_bu = $1"
SELECT_MONTH_SPEND: Final = "select payer_bu, consumer_bu, amount from ledger.period_spend where period = $1"
SELECT_MONTH_ALERTS: Final = """
select payer_bu, scope, kind, threshold_percent, payload from ledger.budget_alerts where period = $1 order by raised_at
"""
SELECT_MONTH_QUOTAS: Final = "select payer_bu, scope, exhausted from ledger.quota_states where period = $1"


@dataclass(frozen=True)
class Balance:
    """A business unit's figures: money spent (as payer) and earned (as
    provider), Tokens consumed and served."""

    bu: str
    display_name: str
    spend: Decimal
    revenue: Decimal
    tokens_consumed: int
    tokens_served: int

    @property
    def net(self) -> Decimal:
        """Revenue - spend: what settlement nets."""
        return self.revenue - self.spend


def _zero() -> dict[str, Decimal]:
    return dict.fromkeys(_FIGURE_OF_KIND.values(), Decimal(0))


def _figures(rows: list[asyncpg.Record]) -> dict[str, dict[str, Decimal]]:
    """Per BU: spend and consumed are debit balances, revenue and served credit balances."""
    figures: dict[str, dict[str, Decimal]] = defaultdict(_zero)
    for row in rows:
        bu, kind = parse_account(row["account"])
        debit_balance = row["debit_total"] - row["credit_total"]
        figures[bu][_FIGURE_OF_KIND[kind]] += debit_balance if kind in DEBIT_NORMAL else -debit_balance
    return figures


async def balances(pool: asyncpg.Pool, *, names: Mapping[str, str] | None = None, bu: str | None = None,
                   as_of: datetime | None = None, by: TimeBasis = "event-time") -> list[Balance]:
    """Every business unit's balance (or only `bu`'s), by slug. Now: the
    balances projection; `as_of`: the journal's entries up to that event time
    (or posting time, `by`). `names` are display names by slug (metering's
    registry): a registered BU with nothing posted has zero balances, not none."""
    async with pool.acquire() as connection:
        if as_of is None:
            rows = await connection.fetch(SELECT_PROJECTION)
        else:
            rows = await connection.fetch(SELECT_AS_OF.format(column=_COLUMNS[by]), as_of)
    figures = _figures(rows)
    names = names or {}
    if bu is not None and bu in names:
        figures.setdefault(bu, _zero())
    return [
        Balance(name, names.get(name, name), values["spend"], values["revenue"],
                int(values["tokens_consumed"]), int(values["tokens_served"]))
        for name, values in sorted(figures.items())
        if bu is None or name == bu
    ]


@dataclass(frozen=True)
class BudgetStatus:
    """A payer's budget in force for a month, per scope, against its month-to-date spend by event time."""

    budget: BudgetSet
    month: str
    spent: Decimal
    thresholds_crossed: tuple[Decimal, ...]
    quota_exhausted: bool

    @property
    def consumer_bu(self) -> str | None:
        return None if self.budget.scope == WHOLE_PAYER else self.budget.scope

    @property
    def used_percent(self) -> Decimal:
        """Spent as a percentage of the budget, to two places (display)."""
        return (self.spent * 100 / self.budget.amount).quantize(Decimal("0.01"))


async def budgets(pool: asyncpg.Pool, *, month: str, bu: str | None = None) -> list[BudgetStatus]:
    """Each payer's budget in force for `month` (ISO, `2026-03`) per scope,
    with month-to-date spend, the thresholds crossed and the quota state;
    ordered by payer and scope."""
    async with pool.acquire() as connection:
        known = [BudgetSet.model_validate_json(bytes(row["payload"])) for row in await connection.fetch(SELECT_BUDGETS, bu)]
        spend: dict[str, dict[str, Decimal]] = {}
        for row in await connection.fetch(SELECT_MONTH_SPEND, month):
            spend.setdefault(row["payer_bu"], {})[row["consumer_bu"]] = row["amount"]
        alerts = await connection.fetch(SELECT_MONTH_ALERTS, month)
        quotas = {(row["payer_bu"], row["scope"]): row["exhausted"] for row in await connection.fetch(SELECT_MONTH_QUOTAS, month)}
    found = []
    for payer, scope in sorted({(budget.payer_bu, budget.scope) for budget in known}):
        budget = in_force(known, payer, scope, month)
        if budget is None:
            continue
        crossed = sorted(row["threshold_percent"] for row in alerts
                         if row["payer_bu"] == payer and row["scope"] == scope and row["kind"] == "threshold")
        found.append(BudgetStatus(budget, month, scope_spend(spend.get(payer, {}), scope), tuple(crossed),
                                  bool(quotas.get((payer, scope), False))))
    return found
