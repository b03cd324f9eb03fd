"""Balances per business unit and what a net position means, and monthly
budgets with their month-to-date spend."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tokenhub.contracts.budgets import BudgetSet
from tokenhub.services.ledger.queries import Balance, BudgetStatus
from tokenhub.views.text import money, table


def balances_table(rows: list[Balance], currency: str, one_bu: str | None = None) -> str:
    """The table, then what the net means: for one business unit, what it owes or
    is owed across its accounts; for all, the check that net positions sum to zero."""
    rendered = table(
        ("business unit", "name", f"spend {currency}", f"revenue {currency}", f"net {currency}", "Tokens consumed", "Tokens served"),
        [(row.bu, row.display_name, money(row.spend), money(row.revenue), money(row.net),
          f"{row.tokens_consumed:,}", f"{row.tokens_served:,}") for row in rows],
        right={2, 3, 4, 5, 6},
    )
    total_net = sum((row.net for row in rows), Decimal(0))
    if one_bu is not None:
        return f"{rendered}\n{net_meaning(one_bu, total_net, currency)}"
    return f"{rendered}\nnet positions sum to {total_net:f} (zero in a balanced ledger)"


def net_meaning(bu: str, net: Decimal, currency: str) -> str:
    """One business unit's net position (revenue - spend) in words."""
    if net < 0:
        return f"net: {bu} owes {-net:f} {currency} across its accounts (its spend exceeds its revenue)"
    if net > 0:
        return f"net: {bu} is owed {net:f} {currency} across its accounts (its revenue exceeds its spend)"
    return f"net: {bu} owes nothing and is owed nothing (its revenue equals its spend)"


def balances_document(rows: list[Balance]) -> list[dict[str, Any]]:
    return [{"bu": row.bu, "display_name": row.display_name, "spend": row.spend, "revenue": row.revenue, "net": row.net,
             "tokens_consumed": row.tokens_consumed, "tokens_served": row.tokens_served} for row in rows]


def budget_document(status: BudgetStatus) -> dict[str, Any]:
    budget = status.budget
    return {
        "payer_bu": budget.payer_bu, "consumer_bu": status.consumer_bu, "period": status.month,
        "budget_id": budget.id, "amount": budget.amount, "currency": budget.currency,
        "thresholds_percent": list(budget.thresholds_percent), "hard_limit": budget.hard_limit,
        "spent": status.spent, "used_percent": status.used_percent,
        "thresholds_crossed": [threshold.normalize() for threshold in status.thresholds_crossed],
        "quota_exhausted": status.quota_exhausted,
        "actor": budget.actor, "reason": budget.reason, "set_at": budget.set_at, "period_from": budget.period_from,
    }


def budgets_table(rows: list[dict[str, Any]], currency: str) -> str:
    return table(
        ("payer", "consumer", "month", f"budget {currency}", "spent", "used %", "thresholds crossed", "hard limit",
         "quota", "set by", "reason"),
        [(row["payer_bu"], row["consumer_bu"] or "(all)", row["period"], f"{row['amount']:f}", f"{row['spent']:f}",
          f"{row['used_percent']:f}", ", ".join(f"{value:f}" for value in row["thresholds_crossed"]) or "-",
          "-" if row["hard_limit"] is None else f"{row['hard_limit']:f}",
          "EXHAUSTED" if row["quota_exhausted"] else "available", row["actor"], row["reason"]) for row in rows],
        right={3, 4, 5},
    )


def budget_published(budget: BudgetSet) -> str:
    scope = f" for consumer {budget.consumer_bu}" if budget.consumer_bu else ""
    limit = f", hard limit {budget.hard_limit:f}" if budget.hard_limit is not None else ""
    return (f"budget {budget.amount:f} {budget.currency} a month for {budget.payer_bu}{scope} from {budget.period_from}"
            f" (thresholds {', '.join(f'{t:f}' for t in budget.thresholds_percent)} %{limit}) published as {budget.id}")
