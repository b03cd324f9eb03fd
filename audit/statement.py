"""A business unit's statement: the journal entries behind its balance in a
window, between the balances at both ends, each entry's movements checked
against its Priced as they are read back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg

from tokenhub.audit.balances import ACCOUNT_TOTALS, FIGURES, figures_document, figures_of, zero
from tokenhub.audit.log import exact, loads_many
from tokenhub.contracts.accounts import account_name, bu_accounts_pattern
from tokenhub.contracts.ids import posted_id
from tokenhub.contracts.stored import unpack

SELECT_STATEMENT: Final = """
select priced_id, chain, sequence, event_time, posted_at, money_debit, money_credit, amount, tokens_debit, tokens_credit,
       tokens, entry_hash, priced, overage
from ledger.journal
where (money_debit = any($1::text[]) or money_credit = any($1::text[])
       or tokens_debit = any($1::text[]) or tokens_credit = any($1::text[]))
  and {column} >= $2 and {column} < $3
order by {column}, chain, sequence
limit $4
"""
SELECT_ACCOUNTS_AS_OF: Final = ACCOUNT_TOTALS.format(where="where j.{column} < $1") + "having legs.account like $2"


class Unbalanced(ValueError):
    """An entry read back does not move what its Priced says: the journal is damaged."""


@dataclass(frozen=True)
class StatementLine:
    entry_id: str
    """The id of the entry's LedgerPosted."""
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
    overage: bool = False
    """Posted while the payer's quota was exhausted: billed all the same, and marked."""


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

    @property
    def overage(self) -> Decimal:
        """Of the BU's spend in the window, what was posted over quota: a mark, already in the spend."""
        return sum((line.effect["spend"] for line in self.lines if line.overage), Decimal(0))

    @property
    def agrees(self) -> bool:
        """Opening + entries = closing, figure by figure (a truncated statement cannot tell)."""
        movements = self.movements
        return all(self.opening[figure] + movements[figure] == self.closing[figure] for figure in FIGURES)

    def document(self) -> dict[str, Any]:
        """The statement as JSON of a stable shape (`tokenhub statement --json`), amounts exact."""
        return {
            "bu": self.bu, "from": self.start.isoformat(), "to": self.end.isoformat(), "by": self.by,
            "opening": figures_document(self.opening), "movements": figures_document(self.movements),
            "closing": figures_document(self.closing), "truncated": self.truncated, "overage": f"{self.overage:f}",
            "entries": [{"entry_id": line.entry_id, "priced_id": line.priced_id, "kind": line.kind,
                         "corrects_id": line.corrects_id, "chain": line.chain, "sequence": line.sequence,
                         "event_time": line.event_time.isoformat(), "posted_at": line.posted_at.isoformat(),
                         "payer_bu": line.payer_bu, "consumer_bu": line.consumer_bu, "provider_bu": line.provider_bu,
                         "app": line.app, "model": line.model, "amount": f"{line.amount:f}", "tokens": line.tokens,
                         "effect": figures_document(line.effect), "overage": line.overage} for line in self.lines],
        }


STATEMENT_LINES_MAX: Final = 100_000
"""Entries on one statement: a month of a large BU; narrow the window for more."""


def _line(bu: str, row: asyncpg.Record) -> StatementLine:
    """A statement line from a journal row, its movements read from the row's
    transfers and checked against the Priced it holds."""
    priced = loads_many(unpack(row["priced"]))
    spend = account_name(priced["payer_bu"], "spend")
    amount = row["amount"] if row["money_debit"] == spend else -row["amount"]
    tokens = row["tokens"] if row["tokens_debit"] == account_name(priced["consumer_bu"], "consumed") else -row["tokens"]
    if (spend not in (row["money_debit"], row["money_credit"]) or amount != exact(priced["total_amount"])
            or tokens != priced["total_tokens"]):
        raise Unbalanced(f"entry of Priced {row['priced_id']} (chain {row['chain']} #{row['sequence']}) "
                         "does not move what its Priced says")
    effect = zero()
    if priced["payer_bu"] == bu:
        effect["spend"] += amount
    if priced["provider_bu"] == bu:
        effect["revenue"] += amount
        effect["tokens_served"] += tokens
    if priced["consumer_bu"] == bu:
        effect["tokens_consumed"] += tokens
    return StatementLine(
        str(posted_id(priced["id"])), priced["id"], priced.get("kind", "charge"), priced.get("corrects_id"), row["chain"],
        row["sequence"], row["event_time"], row["posted_at"], priced["payer_bu"], priced["consumer_bu"],
        priced["provider_bu"], priced.get("app"), priced["model"], amount, tokens, effect, row["overage"])


async def statement(pool: asyncpg.Pool, bu: str, start: datetime, end: datetime, by: str = "event-time",
                    limit: int = STATEMENT_LINES_MAX) -> Statement:
    """The entries behind a BU's balance in [start, end), between the balances
    at both ends; each entry's movements are checked against its Priced as read back."""
    column = "event_time" if by == "event-time" else "posted_at"
    pattern = bu_accounts_pattern(bu)
    accounts = [account_name(bu, kind) for kind in ("spend", "revenue", "consumed", "served")]
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        opening = figures_of(await connection.fetch(SELECT_ACCOUNTS_AS_OF.format(column=column), start, pattern)).get(bu, zero())
        closing = figures_of(await connection.fetch(SELECT_ACCOUNTS_AS_OF.format(column=column), end, pattern)).get(bu, zero())
        rows = await connection.fetch(SELECT_STATEMENT.format(column=column), accounts, start, end, limit + 1)
    lines = [_line(bu, row) for row in rows[:limit]]
    return Statement(bu, start, end, by, opening, lines, closing, len(rows) > limit)
