"""A business unit's statement: the journal entries behind its balance in a
window, between the balances at both ends, each entry's legs checked to
balance as they are read back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

import asyncpg

from tokenhub.audit.balances import FIGURES, figures_of, zero
from tokenhub.contracts.accounts import bu_accounts_pattern

SELECT_STATEMENT: Final = """
select e.entry_id, e.priced_id, e.kind, e.corrects_id, e.chain, e.sequence, e.payer_bu, e.consumer_bu, e.provider_bu,
       e.app, e.model, e.amount, e.tokens, e.event_time, e.posted_at, e.entry_hash,
       coalesce(sum(p.debit) filter (where p.ledger = 'money'), 0) as money_debit,
       coalesce(sum(p.credit) filter (where p.ledger = 'money'), 0) as money_credit,
       coalesce(sum(p.debit) filter (where p.ledger = 'tokens'), 0) as tokens_debit,
       coalesce(sum(p.credit) filter (where p.ledger = 'tokens'), 0) as tokens_credit
from ledger.entries e join ledger.postings p using (entry_id)
where (e.payer_bu = $1 or e.consumer_bu = $1 or e.provider_bu = $1)
  and e.{column} >= $2 and e.{column} < $3
group by e.entry_id
order by e.{column}, e.chain, e.sequence
limit $4
"""
SELECT_ACCOUNTS_AS_OF: Final = """
select p.ledger, p.account, sum(p.debit) as debit_total, sum(p.credit) as credit_total
from ledger.postings p join ledger.entries e using (entry_id)
where e.{column} < $1 and p.account like $2
group by p.ledger, p.account
"""


class Unbalanced(ValueError):
    """An entry read back does not balance: the journal is damaged."""


@dataclass(frozen=True)
class StatementLine:
    entry_id: str
    priced_id: str
    kind: str
    corrects_id: str | None
    chain: str
    sequence: int
    event_time: datetime
    posted_at: datetime
    payer_bu: str
    consumer_bu: str
    provider_bu: str
    app: str | None
    model: str
    amount: Decimal
    tokens: int
    effect: dict[str, Decimal]
    """What this entry adds to each of the BU's figures."""


@dataclass(frozen=True)
class Statement:
    bu: str
    start: datetime
    end: datetime
    by: str
    opening: dict[str, Decimal]
    lines: list[StatementLine]
    closing: dict[str, Decimal]
    truncated: bool

    @property
    def movements(self) -> dict[str, Decimal]:
        return {figure: sum((line.effect[figure] for line in self.lines), Decimal(0)) for figure in FIGURES}


STATEMENT_LINES_MAX: Final = 100_000
"""Entries on one statement: a month of a large BU; narrow the window for more."""


def _effect(bu: str, row: asyncpg.Record) -> dict[str, Decimal]:
    effect = zero()
    if row["payer_bu"] == bu:
        effect["spend"] += row["amount"]
    if row["provider_bu"] == bu:
        effect["revenue"] += row["amount"]
        effect["tokens_served"] += row["tokens"]
    if row["consumer_bu"] == bu:
        effect["tokens_consumed"] += row["tokens"]
    return effect


async def statement(pool: asyncpg.Pool, bu: str, start: datetime, end: datetime, by: str = "event-time",
                    limit: int = STATEMENT_LINES_MAX) -> Statement:
    """The entries behind a BU's balance in [start, end), between the balances
    at both ends; each entry's legs are checked to balance as read back."""
    column = "event_time" if by == "event-time" else "posted_at"
    pattern = bu_accounts_pattern(bu)
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        opening = figures_of(await connection.fetch(SELECT_ACCOUNTS_AS_OF.format(column=column), start, pattern)).get(bu, zero())
        closing = figures_of(await connection.fetch(SELECT_ACCOUNTS_AS_OF.format(column=column), end, pattern)).get(bu, zero())
        rows = await connection.fetch(SELECT_STATEMENT.format(column=column), bu, start, end, limit + 1)
    lines = []
    for row in rows[:limit]:
        if row["money_debit"] != row["money_credit"] or row["tokens_debit"] != row["tokens_credit"]:
            raise Unbalanced(f"entry {row['entry_id']} (chain {row['chain']} #{row['sequence']}) does not balance")
        lines.append(StatementLine(
            str(row["entry_id"]), str(row["priced_id"]), row["kind"], str(row["corrects_id"]) if row["corrects_id"] else None,
            row["chain"], row["sequence"], row["event_time"], row["posted_at"], row["payer_bu"], row["consumer_bu"],
            row["provider_bu"], row["app"], row["model"], row["amount"], row["tokens"], _effect(bu, row)))
    return Statement(bu, start, end, by, opening, lines, closing, len(rows) > limit)
